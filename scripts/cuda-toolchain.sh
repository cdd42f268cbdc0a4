#!/usr/bin/env bash
# cuda-toolchain.sh [install|env|check] [--with-libs]
#
# A CUDA toolchain for `make build-cuda` on a machine without a system CUDA: nvcc, its headers and
# libcudart come from NVIDIA's wheels on PyPI (installed with pip into $CUDA_TOOLCHAIN_DIR, default
# .cuda/ in the repo, git-ignored). Nothing else is downloaded.
#
#   install   (default) install the toolchain if it is not there yet; idempotent
#   env       print the `export` lines that put it on the paths (eval "$(scripts/cuda-toolchain.sh env)")
#   check     print nvcc's version and the paths
#
# The version is pinned to CUDA 13.0 (CUDA_WHEEL_VERSION): the GPU machines run driver 580 (CUDA
# 13.0), and candle's kernels are PTX that the driver compiles at load time, so PTX from a newer nvcc
# would be refused there ("unsupported PTX version"). The binaries link libcudart statically and
# load libcuda, cuBLAS, cuRAND and NVRTC at run time (cudarc's dynamic loading), so building
# needs none of those; --with-libs adds them (about 600 MB) for a GPU machine that has a driver
# but no CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

action=install
with_libs=0
for arg in "$@"; do
    case "$arg" in
    install | env | check) action=$arg ;;
    --with-libs) with_libs=1 ;;
    *) echo "cuda-toolchain.sh: unknown argument '$arg' (expected install, env, check or --with-libs)" >&2; exit 2 ;;
    esac
done

dir=${CUDA_TOOLCHAIN_DIR:-.cuda}
version=${CUDA_WHEEL_VERSION:-13.0}
major=${version%%.*}
python=${PYTHON:-python3}
root="$dir/site/nvidia/cu$major"
stamp="$dir/installed-$version"
[ "$with_libs" = 1 ] && stamp="$stamp-libs"

print_env() {
    local abs
    abs=$(cd "$root" && pwd)
    cat <<EOF
export CUDA_HOME="$abs"
export CUDA_PATH="$abs"
export CUDA_ROOT="$abs"
export NVCC="$abs/bin/nvcc"
export PATH="$abs/bin:\$PATH"
export LD_LIBRARY_PATH="$abs/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LIBRARY_PATH="$abs/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
EOF
}

if [ "$action" = env ]; then
    [ -x "$root/bin/nvcc" ] || { echo "cuda-toolchain.sh: no toolchain in $dir; run scripts/cuda-toolchain.sh install" >&2; exit 1; }
    print_env
    exit 0
fi

if [ "$action" = install ] && [ ! -e "$stamp" ]; then
    start=$(date +%s)
    # nvcc (cudafe++, ptxas, fatbinary), cicc and libdevice (nvvm), the crt headers, the runtime's
    # headers and libcudart (candle-kernels links it), and CCCL (cuda_bf16.h includes cuda/std).
    pkgs=("nvidia-cuda-nvcc==$version.*" "nvidia-nvvm==$version.*" "nvidia-cuda-crt==$version.*"
        "nvidia-cuda-runtime==$version.*" "nvidia-cuda-cccl==$version.*")
    if [ "$with_libs" = 1 ]; then
        pkgs+=("nvidia-cublas==$major.*" "nvidia-curand" "nvidia-cuda-nvrtc==$version.*" "nvidia-nvjitlink==$version.*")
    fi
    echo "cuda-toolchain.sh: installing ${pkgs[*]} into $dir/site"
    mkdir -p "$dir"
    # --no-deps: the wheels are plain files; pip's resolver would pull nothing else we need.
    nice -n 15 "$python" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
        --upgrade --target "$dir/site" "${pkgs[@]}"
    touch "$stamp"
    echo "cuda-toolchain.sh: installed in $(( $(date +%s) - start )) s"
fi

[ -x "$root/bin/nvcc" ] || { echo "cuda-toolchain.sh: nvcc missing under $root" >&2; exit 1; }
# nvcc.profile looks for headers under targets/x86_64-linux/include and libraries under lib64,
# the layout of a system install; the wheels put them in include/ and lib/.
mkdir -p "$root/targets"
ln -sfn .. "$root/targets/x86_64-linux"
ln -sfn lib "$root/lib64"
# candle-kernels links `-lcudart`. Offering only the static archive under that name links
# it into the binaries, so they need no libcudart at run time (and start on machines
# without CUDA); the other libraries are loaded with dlopen and need no link names.
ln -sfn libcudart_static.a "$root/lib/libcudart.a"
rm -f "$root/lib/libcudart.so"
if [ "$action" = check ] || [ "$action" = install ]; then
    "$root/bin/nvcc" --version | tail -n 2
    echo "CUDA_HOME=$(cd "$root" && pwd)"
fi
