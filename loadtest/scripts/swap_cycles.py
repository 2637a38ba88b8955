#!/usr/bin/env python3
"""Swap cycles under load: resident memory and latency across many hot swaps.

Starts a Sluice binary over a fresh repository holding `scale` version 1,
measures its steady p99 under a light closed-loop load, then runs N cycles of
"publish version v+1 (y = x * (v+1)) with `sluice models publish`, wait until
it answers, delete version v" while the load continues, and reports:

- resident memory (VmRSS) before and after the cycles, and the ratio;
- p99 latency during the swaps against the steady p99;
- failed requests and answers that do not match the version they name.

It asserts nothing about timing (a benchmark, not a test); it exits non-zero
only if a request failed or an answer was wrong. Bounded: N cycles, each
waiting at most 20 s. Loopback only.

    .venv/bin/python loadtest/scripts/swap_cycles.py --sluice target/release/sluice --cycles 200
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
import generate  # noqa: E402  (models/generate.py: write_scale_model)

X = [1.0, 2.0, 3.0, 4.0]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]}).encode()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Load:
    """Closed-loop clients; records per-request latency (s) with the time it ended."""

    def __init__(self, port: int, clients: int):
        self.port, self.stop = port, threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.failed = self.wrong = 0
        self.max_version = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/scale/infer", BODY, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                t1 = time.perf_counter()
                if r.status != 200:
                    with self.lock:
                        self.failed += 1
                    continue
                body = json.loads(data)
                v = int(body["model_version"])
                ok = body["outputs"][0]["data"] == [x * v for x in X]
                with self.lock:
                    self.samples.append((t1, t1 - t0))
                    self.max_version = max(self.max_version, v)
                    if not ok:
                        self.wrong += 1
            except Exception:  # a transport error is a failed request
                with self.lock:
                    self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def p99(self, since: float, until: float) -> float:
        with self.lock:
            xs = sorted(d for t, d in self.samples if since <= t < until)
        return xs[int(0.99 * (len(xs) - 1))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sluice", default=str(ROOT / "target/release/sluice"))
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steady-s", type=float, default=5.0)
    ap.add_argument("--report", help="write the JSON report here too")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sluice-swaps-"))
    repo, staging = work / "models", work / "staging"
    staging.mkdir()
    generate.write_scale_model(repo / "scale" / "1" / "model.onnx", 1.0)
    proc = subprocess.Popen([args.sluice, "serve", "--models", str(repo), "--http-addr", "127.0.0.1:0",
                             "--rescan-interval-ms", "500", "--log", "warn"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/v2/models/scale/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("sluice never became ready")
            time.sleep(0.05)

        load = Load(port, args.clients)
        for t in load.threads:
            t.start()
        t_steady = time.perf_counter()
        time.sleep(args.steady_s)
        rss_before = rss_bytes(proc.pid)
        steady_p99 = load.p99(t_steady, time.perf_counter())

        t_swaps = time.perf_counter()
        for i in range(args.cycles):
            v = i + 2
            f = staging / f"scale-{v}.onnx"
            generate.write_scale_model(f, float(v))
            subprocess.run([args.sluice, "models", "publish", "scale", str(f), "--models", str(repo)],
                           check=True, capture_output=True)
            end = time.time() + 20
            while load.max_version < v:
                if time.time() > end:
                    raise SystemExit(f"version {v} never answered")
                time.sleep(0.002)
            shutil.rmtree(repo / "scale" / str(v - 1))
            f.unlink()
            print(f"\rcycle {i + 1}/{args.cycles}: serving v{v}, failed {load.failed}, wrong {load.wrong}",
                  end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        swaps_p99 = load.p99(t_swaps, time.perf_counter())
        time.sleep(2.0)  # let the last retired versions drain and unload
        rss_after = rss_bytes(proc.pid)
        load.stop.set()
        for t in load.threads:
            t.join(timeout=30)
        report = {
            "cycles": args.cycles,
            "requests": len(load.samples),
            "failed": load.failed,
            "wrong": load.wrong,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_ratio": rss_after / rss_before,
            "steady_p99_ms": steady_p99 * 1e3,
            "swaps_p99_ms": swaps_p99 * 1e3,
            "p99_ratio": swaps_p99 / steady_p99,
            "swap_seconds": time.perf_counter() - t_swaps,
        }
        print(json.dumps(report, indent=2))
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        return 0 if load.failed == 0 and load.wrong == 0 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
