#!/usr/bin/env bash
# How `make iter LAUNCHER=slurm` runs a stage on Slurm.
#
#   slurm.sh submit NAME SHARDS LOGS GENERATE [SBATCH_ARGS...] -- STAGE_COMMAND...
#
# SHARDS 0 submits STAGE_COMMAND as one job. SHARDS >= 1 submits a job array of SHARDS tasks:
# task I runs STAGE_COMMAND with `--shard I/SHARDS` and its `--out FILE` moved to
# <folder of FILE>/shards/<stem of FILE>/I/<name of FILE> (files a stage writes beside --out,
# such as score's scores.parquet, land there too); when every task has ended well,
# `GENERATE merge` joins each file of the shards into the folder of FILE, byte-identical to an
# unsharded run, and the shards are removed. sbatch waits (--wait) and fails when a task fails.
# Job logs: LOGS/NAME.log, LOGS/NAME-<I>.log. The working folder must be visible to the nodes.
#
#   slurm.sh task SHARDS -- STAGE_COMMAND...   what each job runs (the batch script)
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 2; }

# The shard folder of output FILE, for task I.
shard_dir() { local base; base=$(basename "$1"); echo "$(dirname "$1")/shards/${base%.parquet}/$2"; }

task() {
  local shards=$1; shift
  [ "${1:-}" = "--" ] && shift
  if [ "$shards" -eq 0 ]; then exec "$@"; fi
  local i=${SLURM_ARRAY_TASK_ID:?a sharded task runs in a job array}
  local args=() out="" next_is_out=0
  for a in "$@"; do
    if [ "$next_is_out" = 1 ]; then
      out=$a
      a=$(shard_dir "$out" "$i")/$(basename "$out")
      mkdir -p "$(dirname "$a")"
      next_is_out=0
    elif [ "$a" = "--out" ]; then
      next_is_out=1
    fi
    args+=("$a")
  done
  [ -n "$out" ] || die "a sharded stage needs --out FILE: $*"
  exec "${args[@]}" --shard "$i/$shards"
}

submit() {
  local name=$1 shards=$2 logs=$3 generate=$4; shift 4
  local sbatch_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do sbatch_args+=("$1"); shift; done
  [ "${1:-}" = "--" ] || die "submit: expected -- STAGE_COMMAND"
  shift
  command -v sbatch >/dev/null || die "sbatch is not on PATH (LAUNCHER=slurm needs a Slurm client; scripts/slurm-local.sh starts a one-node cluster)"
  mkdir -p "$logs"
  local array=() log="$logs/$name.log"
  if [ "$shards" -ge 1 ]; then
    array=(--array="0-$((shards - 1))"); log="$logs/$name-%a.log"
  fi
  echo "slurm.sh: sbatch $name${array:+ ${array[*]}}" >&2
  if ! sbatch --wait --quiet --job-name="rspo-$name" --output="$log" "${array[@]}" \
      "${sbatch_args[@]}" "$0" task "$shards" -- "$@"; then
    die "$name failed; its log: ${log/\%a/<task>}"
  fi
  [ "$shards" -ge 1 ] || return 0
  merge "$generate" "$shards" "$@"
}

# Joins the files of every shard into the folder of --out, then removes the shards.
merge() {
  local generate=$1 shards=$2; shift 2
  local out="" prev=""
  for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
  local first
  first=$(shard_dir "$out" 0)
  for f in "$first"/*.parquet; do
    local name parts=()
    name=$(basename "$f")
    for i in $(seq 0 $((shards - 1))); do parts+=("$(shard_dir "$out" "$i")/$name"); done
    "$generate" merge --out "$(dirname "$out")/$name" "${parts[@]}"
  done
  rm -r "$(dirname "$first")"
  rmdir "$(dirname "$out")/shards" 2>/dev/null || true
}

case "${1:-}" in
  submit) shift; submit "$@" ;;
  task) shift; task "$@" ;;
  *) echo "usage: $0 submit NAME SHARDS LOGS GENERATE [SBATCH_ARGS...] -- COMMAND... | task SHARDS -- COMMAND..." >&2; exit 64 ;;
esac
