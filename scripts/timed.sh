#!/usr/bin/env bash
# timed.sh LOG LABEL -- COMMAND...: runs COMMAND and appends "LABEL<TAB>seconds" to LOG, so the
# evaluation report can say how long each stage took (timings never go into the Parquet files,
# which must be byte-identical across runs).
set -euo pipefail
log=$1 label=$2
shift 2
[ "${1:-}" = "--" ] && shift
mkdir -p "$(dirname "$log")"
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
awk -v l="$label" -v s="$start" -v e="$end" 'BEGIN { printf "%s\t%.1f\n", l, e - s }' >> "$log"
