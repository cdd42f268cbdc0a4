#!/usr/bin/env bash
# gpu-check.sh [BUNDLE]: the GPU check, in one run of a few minutes.
#
# On a machine with an NVIDIA GPU and the bundle that scripts/cuda-build.sh packs
# (target/cuda/rspo-cuda.tar.xz; no Rust needed there):
#   1. the fixture parity tests on CUDA: f32 within the fixtures' 1e-4, bf16 within the bounds
#      argued in shared/tests/model_fixtures.rs and rspo_oracle.rs, and the mixed-precision
#      training tests (f32 masters, f32 optimizer state, bf16 passes);
#   2. every model stage once with --device cuda on the tiny fixtures (sample, logprobs,
#      score, estimate-winrate, train-step, evaluate);
#      The fixture tests include the decode loop on the device against the CPU's, same seeds:
#      greedy rows must be identical; the share of identical greedy and sampled rows goes in
#      the table;
#   3. generate / logprobs / train-step throughput, bf16 and f32, on the 40M benchmark shape
#      (bench/bench-40m.config.json) and the SmolLM2-135M shape
#      (bench/bench-smollm2-135m.config.json), ours (shared/benches/throughput.rs) and Hugging
#      Face transformers + PyTorch's (scripts/gpu_check_torch.py) side by side;
#   4. one table: ours vs theirs, and the decode parity; printed and written to $OUT/table.md.
# Sized to finish in under 8 minutes on an H100/H200 from a fresh machine, unpacking included.
# Without a GPU (or without the bundle) it runs the same steps on the CPU with cargo (the dev
# profile `make test` builds), f32 on the 40M shape only (GPU_CHECK_FULL=1 adds SmolLM2-135M),
# and skips PyTorch when it is not installed. On CUDA, GPU_CHECK_FULL=1 adds the
# Qwen2.5-0.5B shape in bf16.
#
# Environment: GPU_CHECK_DEVICE (cuda or cpu; default: cuda when nvidia-smi sees a GPU and the
# bundle exists), GPU_CHECK_RUNS (timed runs per workload, default 3 on CUDA, 1 on CPU),
# GPU_CHECK_FULL, GPU_CHECK_BUDGET (seconds for all steps, default 450: a step's limit is cut to
# what is left, and steps past it are skipped and named, so a lease of a few minutes still ends
# with the table), OUT (a folder for the log, results and table; default target/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bundle=${1:-target/cuda/rspo-cuda.tar.xz}
out=${OUT:-$repo/target/gpu-check}
mkdir -p "$out"
results=$out/gpu-check.jsonl
log=$out/gpu-check.log
table=$out/table.md
: >"$results"
: >"$log"
: >"$table"
started=$(date +%s)
failures=0
skipped=0
budget=${GPU_CHECK_BUDGET:-450}

say() { echo "gpu-check: $*" | tee -a "$log" >&2; }
# run LABEL TIMEOUT CMD...: runs with a time limit (cut to what is left of the budget), output
# to the log; records pass, fail or skip.
run() {
    local label=$1 limit=$2
    shift 2
    local t0 rc left
    left=$((budget - ($(date +%s) - started)))
    if [ "$left" -lt 10 ]; then
        say "SKIP  $label (the ${budget} s budget is spent)"
        skipped=$((skipped + 1))
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $label" >>"$log"
    t0=$(date +%s)
    timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        say "ok    $label ($(($(date +%s) - t0)) s)"
    else
        say "FAIL  $label (exit $rc after $(($(date +%s) - t0)) s; see $log)"
        failures=$((failures + 1))
    fi
    return $rc
}

device=${GPU_CHECK_DEVICE:-}
if [ -z "$device" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && [ -f "$bundle" ]; then
        device=cuda
    else
        device=cpu
    fi
fi
if [ "$device" = cuda ]; then
    runs=${GPU_CHECK_RUNS:-3}
    nvidia-smi -L | tee -a "$log" >&2
    work=$(mktemp -d)
    # xz may be missing where Python is not: tarfile reads .tar.xz too.
    tar -xJf "$bundle" -C "$work" 2>>"$log" ||
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$bundle" "$work" ||
        { say "cannot unpack $bundle"; exit 1; }
    bin=$work/bin
    tests=$work/tests
    # The binaries load libcuda, cuBLAS, cuRAND (and need libcudart) at run time: the
    # driver's, and the CUDA libraries of the local PyTorch or a system toolkit.
    pylibs=$(python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
    )
    export LD_LIBRARY_PATH="${pylibs:+$pylibs:}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # candle's kernels are PTX that the driver compiles on first use; a cache large enough
    # for all of them lets each later process reuse that work.
    export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
    fixtures_test=("$tests/model_fixtures")
    oracle_test=("$tests/rspo_oracle")
    bench=("$tests/throughput")
else
    runs=${GPU_CHECK_RUNS:-1}
    # The dev profile that `make test` builds (dependencies and rspo at opt-level 3): no
    # second full build of everything in release.
    say "no GPU (or no bundle at $bundle): CPU fallback with cargo (dev profile)"
    cargo build --workspace --bins >>"$log" 2>&1 || { say "cargo build failed; see $log"; exit 1; }
    bin=$repo/target/debug
    fixtures_test=(cargo test -q -p rspo --test model_fixtures --)
    oracle_test=(cargo test -q -p rspo --test rspo_oracle --)
    bench=(cargo test -q -p rspo --bench throughput --)
fi
say "device $device, $runs timed run(s) per workload, output in $out"

# 1. Parity with the fixtures on the device.
export RSPO_FIXTURES=$repo/tests/fixtures RSPO_TEST_DEVICE=$device
run "parity: model fixtures (f32 1e-4, bf16 bounds, decode rows vs CPU) on $device" 240 \
    "${fixtures_test[@]}" --test-threads 1 --nocapture
run "parity: RSPO loss/gradients vs PyTorch, mixed precision on $device" 180 "${oracle_test[@]}" --test-threads 1
unset RSPO_TEST_DEVICE

# 2. Every model stage with --device on the tiny fixtures.
smoke=$(mktemp -d)
export RSPO_CACHE_DIR=$smoke/cache
policy=$repo/tests/fixtures/tiny-llama
rm_model=$repo/tests/fixtures/tiny-llama-rm
prompts=$repo/data/prompts/train-1.parquet
s=$smoke/iter-1
run "stage: generate sample --device $device" 120 "$bin/generate" sample --device "$device" \
    --model "$policy" --prompts "$prompts" --out "$s/samples.parquet" --k 2 --max-new-tokens 8 &&
run "stage: generate logprobs --device $device" 120 "$bin/generate" logprobs --device "$device" \
    --model "$policy" --samples "$s/samples.parquet" --role policy --out "$s/logprobs-policy.parquet" &&
run "stage: generate logprobs (reference, reused)" 60 "$bin/generate" logprobs --device "$device" \
    --model "$policy" --samples "$s/samples.parquet" --role reference \
    --out "$s/logprobs-reference.parquet" --reuse "$s/logprobs-policy.parquet" &&
run "stage: score --device $device" 120 "$bin/score" --device "$device" --samples "$s/samples.parquet" \
    --judge reward-model --judge-model "$rm_model" --out "$s/preferences.parquet" &&
run "stage: estimate-winrate" 60 "$bin/estimate-winrate" --preferences "$s/preferences.parquet" \
    --out "$s/winrates.parquet" &&
run "stage: train-step --device $device" 180 "$bin/train-step" --device "$device" --policy "$policy" \
    --samples "$s/samples.parquet" --winrates "$s/winrates.parquet" \
    --policy-logprobs "$s/logprobs-policy.parquet" --reference-logprobs "$s/logprobs-reference.parquet" \
    --out "$s" --preset rspo-paper --beta 0.1 --optimizer adamw --lr 1e-3 --batch-size 16 &&
run "stage: evaluate --device $device" 180 "$bin/evaluate" --device "$device" --models "$policy" "$s/model" \
    --prompts "$prompts" --judge reward-model --judge-model "$rm_model" --baseline "$policy" \
    --k 2 --max-new-tokens 8 --out "$smoke/eval"
rm -rf "$smoke"

# 3. Throughput, ours and PyTorch's, same workloads.
qwen=$repo/bench/bench-qwen2.5-0.5b.config.json
smol=$repo/bench/bench-smollm2-135m.config.json
models=("$repo/bench/bench-40m.config.json")
if [ "$device" = cuda ] || [ "${GPU_CHECK_FULL:-0}" = 1 ]; then models+=("$smol"); fi
if [ "$device" = cuda ] && [ "${GPU_CHECK_FULL:-0}" = 1 ]; then models+=("$qwen"); fi
if [ "$device" = cuda ]; then dtypes=(bf16 f32); else dtypes=(f32); fi
have_torch=0
if python3 -c 'import torch, transformers' >/dev/null 2>&1; then have_torch=1; else say "PyTorch/transformers not installed here: their column is skipped"; fi
for m in "${models[@]}"; do
    for dt in "${dtypes[@]}"; do
        # f32 on the 0.5B shape adds minutes and says little beyond bf16.
        if [ "$dt" = f32 ] && [ "$m" = "$qwen" ]; then continue; fi
        name=$(basename "$m" .config.json)
        run "throughput: rspo  $name $dt" 150 bash -c 'set -o pipefail; "$@" | grep "^{" >>"'"$results"'"' _ \
            "${bench[@]}" --config "$m" --device "$device" --dtype "$dt" --runs "$runs"
        if [ $have_torch = 1 ]; then
            run "throughput: torch $name $dt" 150 bash -c 'set -o pipefail; "$@" | grep "^{" >>"'"$results"'"' _ \
                python3 "$repo/scripts/gpu_check_torch.py" --config "$m" --device "$device" --dtype "$dt" --runs "$runs"
        fi
    done
done

# 4. The table (printed and written to $table).
python3 - "$results" "$log" <<'EOF' | tee "$table" | tee -a "$log"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault((r["model"], r["workload"], r["dtype"], r["device"]), {})[r["impl"]] = r
order = {"generate": 0, "logprobs": 1, "train": 2}
head = ("model", "workload", "dtype", "device", "rspo tok/s", "torch tok/s", "rspo/torch")
lines = []
for (model, workload, dtype, device), impls in sorted(by.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][2])):
    ours, theirs = impls.get("rspo"), impls.get("torch")
    a = ours["tokens_per_s"] if ours else None
    b = theirs["tokens_per_s"] if theirs else None
    ratio = f"{a / b:.2f}" if a and b else "-"
    lines.append((model, workload, dtype, device, f"{a:.1f}" if a else "-", f"{b:.1f}" if b else "skipped", ratio))
widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
print(fmt.format(*head))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for l in lines:
    print(fmt.format(*l))
torch_v = next((r for r in rows if r["impl"] == "torch"), None)
if torch_v:
    print(f"torch {torch_v['torch']}, transformers {torch_v['transformers']}")
parity = [l.strip() for l in open(sys.argv[2]) if l.startswith("decode rows identical to the CPU")]
print(parity[-1] if parity else "decode rows identical to the CPU: not measured (see the parity step)")
EOF
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /' | tee -a "$log" "$table"
else
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
    echo "CPU: $(nproc) cores, ${cpu:-$(uname -m)}" | tee -a "$log" "$table"
fi
say "finished in $(($(date +%s) - started)) s with $failures failure(s) and $skipped skipped step(s); table in $table"
[ "$failures" -eq 0 ] && [ "$skipped" -eq 0 ]
