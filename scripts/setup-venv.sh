#!/usr/bin/env bash
# Creates .venv with the pinned Python tools the tests and the demo-model
# generator use: onnx (model generation), numpy, tritonclient (a real
# third-party OIP client) and pytest. Idempotent: re-running only re-checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/scripts/requirements.txt" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "creating the Python test environment in $venv" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/requirements.txt"
echo "$want" > "$stamp"
