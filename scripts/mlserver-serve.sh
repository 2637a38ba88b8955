#!/usr/bin/env bash
# Serves one ONNX model version with MLServer (the benchmark peer) on 127.0.0.1.
#
#   scripts/mlserver-serve.sh MODEL_DIR PORT
#
# MODEL_DIR is a version directory holding model.onnx, e.g. models/mlp/1: the model
# is named after its parent directory (mlp) and gets the version of MODEL_DIR's
# name (1), so both /v2/models/mlp/infer and /v2/models/mlp/versions/1/infer work.
# PORT is the HTTP port. Needs scripts/setup-mlserver.sh first.
#
# Writes a throwaway MLServer repository (settings.json + <model>/model-settings.json
# using loadtest/mlserver/onnx_runtime.py) and then execs `mlserver start` on it,
# so the PID this script started is MLServer's: SIGTERM/SIGINT stop it cleanly.
# The repository directory is removed once MLServer exits.
#
# Settings (environment):
#   MLSERVER_PARALLEL_WORKERS  inference worker processes (default 0: inference runs in
#                              the server process; 1 is MLServer's own default)
#   MLSERVER_GRPC_PORT         gRPC port (MLServer always starts gRPC; default: a free port)
#   MLSERVER_INTRA_OP_THREADS  ONNX Runtime intra-op threads (default 1)
# Metrics (/metrics and its port) are off, access logs are off (debug false), gzip is off.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 MODEL_DIR PORT   (e.g. $0 models/mlp/1 8090)" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-mlserver"
if [ ! -x "$venv/bin/mlserver" ]; then
  echo "$venv is missing: run scripts/setup-mlserver.sh first" >&2
  exit 1
fi
model_dir="$(cd "$1" && pwd)"
port="$2"
if [ ! -f "$model_dir/model.onnx" ]; then
  echo "$model_dir/model.onnx does not exist" >&2
  exit 1
fi
case "$port" in ''|*[!0-9]*) echo "PORT must be a number, got '$port'" >&2; exit 2 ;; esac
name="$(basename "$(dirname "$model_dir")")"
version="$(basename "$model_dir")"
workers="${MLSERVER_PARALLEL_WORKERS:-0}"
threads="${MLSERVER_INTRA_OP_THREADS:-1}"
grpc_port="${MLSERVER_GRPC_PORT:-$("$venv/bin/python" -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}"

repo="$(mktemp -d "${TMPDIR:-/tmp}/sluice-mlserver.XXXXXX")"
mkdir "$repo/$name"
"$venv/bin/python" - "$repo" "$name" "$version" "$model_dir" "$port" "$grpc_port" "$workers" "$threads" <<'PY'
import json, sys
repo, name, version, model_dir, port, grpc_port, workers, threads = sys.argv[1:]
settings = {
    "debug": False,  # no access log, like a production MLServer
    "host": "127.0.0.1",
    "http_port": int(port),
    "grpc_port": int(grpc_port),
    "metrics_endpoint": None,  # no metrics server, no /metrics
    "parallel_workers": int(workers),
    "gzip_enabled": False,
    "load_models_at_startup": True,
    "model_repository_root": repo,
}
model = {
    "name": name,
    "implementation": "onnx_runtime.OnnxModel",
    "platform": "onnxruntime_onnx",
    "versions": [version],
    "parameters": {
        "uri": model_dir,
        "version": version,
        "extra": {"intra_op_num_threads": int(threads)},
    },
}
with open(f"{repo}/settings.json", "w") as f:
    json.dump(settings, f, indent=2)
with open(f"{repo}/{name}/model-settings.json", "w") as f:
    json.dump(model, f, indent=2)
PY

# exec keeps this PID, so a detached watcher can remove the repository when it ends.
( while kill -0 $$ 2>/dev/null; do sleep 1; done; rm -rf "$repo" ) </dev/null >/dev/null 2>&1 &
echo "mlserver: $name version $version from $model_dir on http://127.0.0.1:$port (gRPC $grpc_port, workers $workers, repository $repo)" >&2
export PYTHONPATH="$root/loadtest/mlserver${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"  # MLServer reads .env and writes .envs/.metrics in its working directory
exec "$venv/bin/mlserver" start "$repo"
