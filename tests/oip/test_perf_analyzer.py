"""Triton's own load generator, perf_analyzer, runs against Sluice unchanged:
it reads the model metadata and config, sends binary-tensor requests, and
reads the statistics extension for its server-side breakdown.

perf_analyzer comes from scripts/setup-perf-analyzer.sh (the test script runs
it first); runs are bounded in requests and time."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / "scripts" / "perf-analyzer"
VENV = ROOT / ".venv-perf-analyzer"


@pytest.fixture(scope="module")
def perf_analyzer():
    if not (VENV / "bin" / "perf_analyzer").exists():
        pytest.fail("perf_analyzer is not installed: run scripts/setup-perf-analyzer.sh")
    return str(PERF_ANALYZER)


def run(perf_analyzer, server, model, shapes, concurrency=2):
    args = [perf_analyzer, "-m", model, "-u", server.hostport, "-i", "http",
            "--concurrency-range", str(concurrency),
            "--measurement-mode", "count_windows", "--measurement-request-count", "200",
            # The machine is shared and noisy: accept any stable-enough window.
            "--stability-percentage", "100", "--max-trials", "5"]
    for name, shape in shapes.items():
        args += ["--shape", f"{name}:{shape}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"perf_analyzer failed ({done.returncode}):\n{out}"
    return out


@pytest.mark.parametrize("model,shapes", [
    ("add_sub", {"INPUT0": "1,16", "INPUT1": "1,16"}),
    ("iris", {"input": "1,4"}),
])
def test_perf_analyzer_measures_sluice(perf_analyzer, server, model, shapes):
    out = run(perf_analyzer, server, model, shapes)
    m = re.search(r"Concurrency: 2, throughput: ([\d.]+) infer/sec, latency (\d+) usec", out)
    assert m, f"no throughput line:\n{out}"
    assert float(m.group(1)) > 0
    # The server-side section comes from Sluice's statistics extension.
    served = re.search(r"Successful request count: (\d+)", out)
    assert served and int(served.group(1)) > 0, f"no server-side statistics:\n{out}"
    assert re.search(r"compute infer \d+ usec", out), out
    print(f"perf_analyzer {model}: {m.group(1)} infer/s at concurrency 2, {m.group(2)} µs average latency")
