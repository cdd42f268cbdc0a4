#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `make iter LAUNCHER=slurm` and tests/slurm.rs.
#
#   scripts/slurm-local.sh start   install slurm-wlm and munge (Debian, as root) if missing,
#                                  write slurm.conf into $SLURM_LOCAL_DIR, start munged,
#                                  slurmctld and slurmd, wait until the node is idle
#   scripts/slurm-local.sh stop    stop the daemons this script started
#   scripts/slurm-local.sh env     print `export SLURM_CONF=...` (eval it before sbatch)
#
# SLURM_LOCAL_INSTALL=0 never installs (tests/slurm.rs sets it: a test does not apt-get).
# Idempotent: `start` on a running cluster only checks it. The node is this host with all its
# CPUs; no cgroups (proctrack/linuxproc, task/none), no accounting database. Logs are in
# $SLURM_LOCAL_DIR/*.log. Exit status 2: Slurm cannot run here (not root, no apt, a daemon that
# does not come up); the message says why.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/rspo-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

die() { echo "slurm-local: $*" >&2; exit 2; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  [ "${SLURM_LOCAL_INSTALL:-1}" != 0 ] || die "slurm-wlm and munge are not installed (SLURM_LOCAL_INSTALL=0: not installing them)"
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root (apt-get needs root)"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
  echo "slurm-local: installing slurm-wlm and munge (apt-get)" >&2
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || die "apt-get install slurm-wlm munge failed"
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool"
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
  cat > "$CONF.tmp" <<EOF
# Written by scripts/slurm-local.sh: one node, this host.
ClusterName=rspo-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups in a container: processes tracked by parent id, no task binding, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  if ! cmp -s "$CONF.tmp" "$CONF" 2>/dev/null; then mv "$CONF.tmp" "$CONF"; else rm "$CONF.tmp"; fi
}

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged >&2 || die "munged did not start (see /var/log/munge/munged.log)"
  else
    munged --force >&2 || die "munged did not start (see /var/log/munge/munged.log)"
  fi
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.1
  done
  die "munge does not answer (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1; }

start() {
  install_packages
  write_conf
  start_munge
  running slurmctld || slurmctld -f "$CONF" >&2 || die "slurmctld did not start (see $DIR/slurmctld.log)"
  running slurmd || slurmd -f "$CONF" >&2 || die "slurmd did not start (see $DIR/slurmd.log)"
  local state=""
  for _ in $(seq 60); do
    state=$(node_state)
    case "$state" in
      idle|mixed|allocated) echo "slurm-local: node $HOST is $state (SLURM_CONF=$CONF)" >&2; return ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "node $HOST is '${state:-unknown}' after 60 s, expected idle (see $DIR/slurmctld.log, $DIR/slurmd.log)"
}

stop() {
  for d in slurmd slurmctld; do
    if running "$d"; then
      pid=$(cat "$DIR/$d.pid")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  echo "slurm-local: stopped slurmd and slurmctld (munged keeps running)" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 64 ;;
esac
