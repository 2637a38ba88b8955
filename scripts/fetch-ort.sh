#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that Sluice loads at run time.
#
# `ort`'s own download cannot work here, so the library is taken from the
# onnxruntime wheel on PyPI (it ships libonnxruntime.so under onnxruntime/capi/)
# and unpacked into .sluice/ort/. Sluice finds it there without ORT_DYLIB_PATH.
# Idempotent: does nothing when the library is already present.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.sluice/ort"
lib="$dest/libonnxruntime.so.$ORT_VERSION"
if [ -f "$lib" ]; then
  exit 0
fi
echo "fetching ONNX Runtime $ORT_VERSION (the onnxruntime wheel) into $dest" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION"
wheel="$(ls "$tmp"/onnxruntime-*.whl)"
mkdir -p "$dest"
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            out = os.path.join(dest, base)
            with z.open(name) as src, open(out + ".part", "wb") as dst:
                dst.write(src.read())
            os.replace(out + ".part", out)
            print("  " + base, file=sys.stderr)
PY
ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest/libonnxruntime.so"
test -f "$lib"
