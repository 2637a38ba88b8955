#!/usr/bin/env bash
# Installs MLServer (Seldon's Open Inference Protocol server, a Python peer that the
# benchmarks compare Sluice with) into .venv-mlserver/, a venv of its own, from the
# fully pinned loadtest/mlserver/requirements.txt (mlserver 1.7.1, uvloop 0.21.0,
# onnxruntime 1.31.1, numpy 2.4.6 and every dependency). MLServer has no ONNX
# runtime of its own: loadtest/mlserver/onnx_runtime.py is one, and
# scripts/mlserver-serve.sh starts MLServer with it. Idempotent: re-running only
# re-checks (a changed requirements file rebuilds the venv). Takes about 30 s.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-mlserver"
req="$root/loadtest/mlserver/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/mlserver" ]; then
  exit 0
fi
# mlserver 1.7.1 requires Python >= 3.9, < 3.13 (PYTHON picks another interpreter).
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] < (3, 13)))'; then
  echo "mlserver 1.7.1 needs Python 3.9-3.12; $python is $("$python" --version 2>&1) (set PYTHON=python3.12 or similar)" >&2
  exit 1
fi
echo "creating $venv with MLServer (loadtest/mlserver/requirements.txt)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -m pip check >&2
# The runtime must import against what was installed.
PYTHONPATH="$root/loadtest/mlserver" "$venv/bin/python" -c 'import onnx_runtime, mlserver; print("mlserver", mlserver.__version__)' >&2
echo "$want" > "$stamp"
