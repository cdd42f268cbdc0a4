#!/usr/bin/env bash
# PyTorch and transformers for the side-by-side benchmark (`make bench-compare`,
# scripts/gpu_check_torch.py), in a virtual environment of their own: .venv-torch/ in the
# repository (git-ignored), or $TORCH_VENV. Plain `torch` and `transformers` from PyPI (about
# 1 GB or more with the CUDA libraries PyPI's Linux wheel pulls in; the benchmark runs it on
# the CPU). Idempotent: a venv that already imports both is left as it is. Prints the venv's
# python on the last line of stdout.
#
#   scripts/torch-venv.sh            set up (or check) .venv-torch/
#   TORCH_VENV=/path scripts/torch-venv.sh   the same for another folder
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${TORCH_VENV:-$repo/.venv-torch}
py=$venv/bin/python

have_both() {
    [ -x "$py" ] && "$py" -c 'import torch, transformers' >/dev/null 2>&1
}

if ! have_both; then
    if [ ! -x "$py" ]; then
        echo "torch-venv: creating $venv" >&2
        python3 -m venv "$venv" || {
            echo "torch-venv: python3 -m venv $venv failed (on Debian: apt-get install python3-venv)" >&2
            exit 1
        }
    fi
    echo "torch-venv: installing torch and transformers from PyPI into $venv" >&2
    "$py" -m pip install --quiet --upgrade pip >&2
    "$py" -m pip install --quiet torch transformers >&2
    if [ -n "${PIP_DRY_RUN:-}" ]; then
        echo "torch-venv: dry run (PIP_DRY_RUN set): nothing installed" >&2
        echo "$py"
        exit 0
    fi
    have_both || {
        echo "torch-venv: $py still cannot import torch and transformers" >&2
        exit 1
    }
fi
"$py" -c 'import torch, transformers; print(f"torch-venv: torch {torch.__version__}, transformers {transformers.__version__}")' >&2
echo "$py"
