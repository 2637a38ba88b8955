#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls `make test`, which calls this).
# Installs what it needs first: the ONNX Runtime library and the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "fetch ONNX Runtime (if missing)"
scripts/fetch-ort.sh
step "Python test environment (.venv)"
scripts/setup-venv.sh
step "Prometheus and promtool (if missing)"
scripts/setup-prometheus.sh
step "Chromium, for the drift page in a real browser (if missing)"
scripts/setup-chromium.sh
step "Triton's perf_analyzer (if missing)"
scripts/setup-perf-analyzer.sh

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests"
cargo build -p sluice-cli
cargo test --workspace

step "demo and fixture models still load and compute what they should"
.venv/bin/python models/generate.py check

step "black-box suites: OIP through tritonclient and the KServe SDK, telemetry through Prometheus and OTLP, deploy/ files"
# One pytest run per suite: each has its own conftest and helpers.
for d in tests/oip tests/grpc tests/telemetry tests/registry tests/deploy tests/rollout tests/drift tests/safety tests/signing tests/validation; do
  if [ -d "$d" ]; then
    step "pytest $d"
    .venv/bin/python -m pytest "$d" -q
  fi
done
