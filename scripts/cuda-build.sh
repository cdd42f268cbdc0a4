#!/usr/bin/env bash
# cuda-build.sh [--bins-only]: the five stage binaries and the parity-test executables with `--features cuda`,
# into target/cuda/ (its own target folder, so CPU and CUDA builds do not evict each other), then
# stripped and packed into target/cuda/rspo-cuda.tar.xz for a GPU machine that has no Rust.
#
# Uses the toolchain from scripts/cuda-toolchain.sh (installed first if missing). CUDA_COMPUTE_CAP
# defaults to 90 (H100/H200): the moe/gguf kernels are compiled to sm_90 machine code; the others
# are PTX that the driver compiles for the GPU it finds.
#
# candle-core 0.11.1 asks cudarc for `dynamic-linking`, which puts libcuda.so.1, libcublas.so.13,
# libnvrtc.so.13 and libcurand.so.10 into the binary's needed libraries: it would not start on a
# machine without them (this one) and needs link stubs to build. We build against a copy of the
# same candle-core whose manifest asks for `dynamic-loading` instead (cudarc dlopens the libraries
# when a CUDA device is first used), passed as a `--config` patch so the CPU build and Cargo.lock
# stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
bins_only=0
[ "${1:-}" = --bins-only ] && bins_only=1
target_dir=target/cuda
stages=(generate score estimate-winrate train-step evaluate)

scripts/cuda-toolchain.sh install >/dev/null
eval "$(scripts/cuda-toolchain.sh env)"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

# The registry copy of candle-core (same version as Cargo.lock), with the one feature swapped.
version=$(sed -n '/^name = "candle-core"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock)
[ -n "$version" ] || { echo "cuda-build.sh: candle-core not found in Cargo.lock" >&2; exit 1; }
$CARGO fetch --locked >/dev/null
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"candle-core-$version" | head -n 1)
[ -f "$src/Cargo.toml" ] || { echo "cuda-build.sh: candle-core-$version not in the cargo registry cache" >&2; exit 1; }
patch_dir=.cuda/patch/candle-core
if [ ! -f "$patch_dir/.from" ] || [ "$(cat "$patch_dir/.from")" != "$src" ]; then
    rm -rf "$patch_dir"
    mkdir -p "$(dirname "$patch_dir")"
    cp -r "$src" "$patch_dir"
    grep -q '"dynamic-linking",' "$patch_dir/Cargo.toml" || {
        echo "cuda-build.sh: candle-core $version no longer asks cudarc for dynamic-linking; revisit this patch" >&2
        exit 1
    }
    sed -i 's/"dynamic-linking",/"dynamic-loading",/' "$patch_dir/Cargo.toml"
    echo "$src" >"$patch_dir/.from"
fi

# Cargo records the patch in Cargo.lock; put the committed lock back whatever happens.
cp Cargo.lock "$target_dir.Cargo.lock.bak" 2>/dev/null || { mkdir -p target; cp Cargo.lock "$target_dir.Cargo.lock.bak"; }
trap 'cp target/cuda.Cargo.lock.bak Cargo.lock' EXIT

# Every stage's `cuda` feature is rspo's; naming rspo's also covers the test executables.
features=rspo/cuda
cargo_args=(--target-dir "$target_dir" --features "$features"
    --config "patch.crates-io.candle-core.path=\"$patch_dir\""
    --config 'profile.release.strip="symbols"')

start=$(date +%s)
mkdir -p "$target_dir"
# One invocation for the binaries and the executables the GPU check runs (the parity tests, the
# throughput bench): test targets bring dev-dependencies, whose features would otherwise make a
# second build of every dependency.
$CARGO build --release "${cargo_args[@]}" --workspace --bins \
    --test model_fixtures --test rspo_oracle --bench throughput \
    --message-format=json-render-diagnostics |
    sed -n 's/.*"target":{[^}]*"kind":\["\(test\|bench\)"\].*"executable":"\([^"]*\)".*/\2/p' \
        >"$target_dir/test-executables.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
if [ "$bins_only" = 1 ]; then
    echo "cuda-build.sh: binaries in $target_dir/release ($(( $(date +%s) - start )) s)"
    exit 0
fi
echo "cuda-build.sh: cargo took $(( $(date +%s) - start )) s"

# The bundle: bin/<stage>, tests/<name> (test and bench executables without their hash),
# stripped.
bundle=$target_dir/bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests"
for s in "${stages[@]}"; do cp "$target_dir/release/$s" "$bundle/bin/"; done
while read -r exe; do
    name=$(basename "$exe")
    cp "$exe" "$bundle/tests/${name%-*}"
done <"$target_dir/test-executables.txt"
strip "$bundle"/bin/* "$bundle"/tests/*
# Each executable carries the same ~33 MB of GPU code (candle's kernels); xz with a dictionary
# larger than one executable stores it once: about 15 MB instead of 18 MB per file with gzip.
tar -C "$bundle" -cf - bin tests | xz -T2 --lzma2=preset=6,dict=512MiB >"$target_dir/rspo-cuda.tar.xz.tmp"
mv "$target_dir/rspo-cuda.tar.xz.tmp" "$target_dir/rspo-cuda.tar.xz"
(cd "$bundle" && stat -c '  %n %s bytes' bin/* tests/*)
echo "cuda-build.sh: $target_dir/rspo-cuda.tar.xz $(stat -c %s "$target_dir/rspo-cuda.tar.xz") bytes, $(( $(date +%s) - start )) s in all"
# A GPU machine gets the tracked tree plus this bundle: at most 60 MiB together (the tree alone
# is held to 40 MiB by tests/tree_size.rs; symlinks count as the files they point to).
tree=$(git ls-files -z | xargs -0 stat -L -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$((tree + $(stat -c %s "$target_dir/rspo-cuda.tar.xz")))
echo "cuda-build.sh: tracked tree $tree bytes + bundle = $total bytes (budget $((60 << 20)))"
if [ "$total" -gt $((60 << 20)) ]; then
    echo "cuda-build.sh: tree plus bundle exceed 60 MiB: trim the bundle or the tree" >&2
    exit 1
fi
