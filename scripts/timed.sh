#!/usr/bin/env bash
# timed.sh LOG LABEL OUTPUT -- COMMAND...: runs COMMAND and, when it wrote OUTPUT (a stage that
# finds its output up to date leaves it alone), appends "LABEL<TAB>seconds" to LOG, so the
# evaluation report can say how long each stage took. Timings never go into the Parquet files,
# which must be byte-identical across runs.
set -euo pipefail
log=$1 label=$2 output=$3
shift 3
[ "${1:-}" = "--" ] && shift
mkdir -p "$(dirname "$log")"
stamp() { stat -c %Y.%y "$output" 2>/dev/null || echo none; }
before=$(stamp)
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
if [ "$(stamp)" != "$before" ]; then
  awk -v l="$label" -v s="$start" -v e="$end" 'BEGIN { printf "%s\t%.1f\n", l, e - s }' >> "$log"
fi
