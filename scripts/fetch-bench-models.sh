#!/usr/bin/env bash
# Fetches the compute-bound benchmark model: the YOLO-style detector 320n.onnx
# (input 1x3x320x320) that the PyPI package nudenet==3.4.2 ships. It is only
# used by the load generator's comparison, so it is not committed: it lands in
# .sluice/bench-models/nudenet/1/model.onnx (a Sluice model repository).
# Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.sluice/bench-models/nudenet/1"
if [ -f "$dest/model.onnx" ]; then
  exit 0
fi
echo "fetching nudenet==3.4.2 (for its 320n.onnx) into $dest" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "nudenet==3.4.2"
mkdir -p "$dest"
python3 - "$tmp"/nudenet-3.4.2-*.whl "$dest/model.onnx" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("nudenet/320n.onnx") as src, open(out + ".part", "wb") as dst:
    dst.write(src.read())
os.replace(out + ".part", out)
PY
# Its height and width are dynamic but must be real image sizes: warm up at
# the size the benchmarks send.
printf 'warmup_shapes = { images = [1, 3, 320, 320] }\n' > "$dest/../model.toml"
echo "  $(du -h "$dest/model.onnx" | cut -f1) $dest/model.onnx" >&2
