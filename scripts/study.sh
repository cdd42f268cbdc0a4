#!/usr/bin/env bash
# study.sh PIPELINE STUDY_DIR N VARIANT...: `make study`. Runs N iterations of PIPELINE once per
# loss variant, each through the Makefile's per-iteration rules with its own RUNDIR
# (STUDY_DIR/<variant>) and loss flags, iteration 1's samples, log-probs, scores and win rates
# in STUDY_DIR/shared (SHARED), then one evaluation of the base model and every iterate, and
# STUDY_DIR/study.md. MAKE and BIN come from the Makefile; variables given to make on its
# command line (LAUNCHER, FEATURES, TRAIN_ARGS, ...) reach the inner makes through MAKEFLAGS.
set -euo pipefail
pipeline=$1 dir=$2 n=$3
shift 3
# The variants are checked (and the pipeline file read) before any stage runs.
plan=$("$BIN/generate" study-plan --config "$pipeline" "$@")
common=(PIPELINE="$pipeline" N="$n" BIN="$BIN" BUILD= PIPELINE_VARS="$dir/pipeline.mk")
names=()
while read -r name reference loss; do
  names+=("$name")
  echo "study: variant $name"
  $MAKE --no-print-directory "${common[@]}" RUNDIR="$dir/$name" SHARED="$dir/shared" \
    REFERENCE_SAMPLES="$([ "$reference" = 1 ] && echo 1)" LOSS_ARGS="$loss" \
    "$dir/$name/iter-$n/train_log.parquet" < /dev/null
done <<< "$plan"
$MAKE --no-print-directory "${common[@]}" RUNDIR="$dir" STUDY_RUNS="${names[*]}" \
  VARIANTS="$*" "$dir/study.md"
echo "study: $dir/study.md"
