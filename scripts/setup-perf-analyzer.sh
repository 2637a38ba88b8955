#!/usr/bin/env bash
# Installs Triton's load generator, perf_analyzer, into .venv-perf-analyzer/.
#
# perf_analyzer ships as a binary inside the tritonclient 2.51.0 wheel (later
# wheels dropped it), in a venv of its own so the test venv keeps its newer
# tritonclient. The binary links libb64 (Debian's libb64-0d) and the CUDA
# runtime library (the nvidia-cuda-runtime-cu12 wheel; no GPU is needed, it is
# only linked). Run it through scripts/perf-analyzer, which sets the library
# path. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-perf-analyzer"
if ! ldconfig -p 2>/dev/null | grep -q 'libb64.so.0d'; then
  echo "installing libb64-0d (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
fi
if [ ! -x "$venv/bin/perf_analyzer" ]; then
  echo "creating $venv with perf_analyzer (tritonclient 2.51.0)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "tritonclient[http]==2.51.0" "nvidia-cuda-runtime-cu12==12.9.79"
fi
"$root/scripts/perf-analyzer" --version >/dev/null 2>&1 || "$root/scripts/perf-analyzer" --help >/dev/null
