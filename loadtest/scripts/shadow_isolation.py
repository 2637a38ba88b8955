#!/usr/bin/env python3
"""Shadow isolation: what a slow or a failing shadow costs the primary.

Starts a Sluice binary (with an admin key) over a fresh repository holding
one model, `scale`, with three versions:

- v1: the fixture `scale/1` (y = x), the primary every request goes to;
- v4: the fixture `scale_failing/1`, which fails every batch that is not a
  multiple of 3 rows, so every single-row shadow copy fails;
- v5: the fixture `scale_slow/1`, v1's answers at ~3 ms of CPU a row;

and a model.toml with `warmup_shapes = { x = [3, 4] }` (so v4 loads). Then,
in rounds, it loads the primary with `sluice-loadtest run` (closed loop,
JSON payload) under three traffic policies set through the admin API, each
round in another order (a b c, then b c a, then c a b, ...):

    (a) no shadow             {"stable": 1}
    (b) slow shadow, 100%     {"stable": 1, "shadows": [{"version": 5, "percent": 100.0}]}
    (c) failing shadow, 100%  {"stable": 1, "shadows": [{"version": 4, "percent": 100.0}]}

For each round and policy it records the primary's requests/s, p50, p99,
errors and server CPU per request, and the change of
`sluice_shadow_requests_total{outcome=compared|failed|dropped}` over the run
(warm-up included, counted once the in-flight copies have settled), next to
the primary's successes over the same span (`served`, from
`sluice_requests_total`): with a shadow at 100% every one of them is
offered to the shadow, so compared + failed + dropped == served. It
prints a table, the ratios of (b) and (c) to (a) for requests/s, p50 and p99
(each the median over rounds), and writes the JSON report with `--report`.

The server, the load generator and the shadow executors share the machine's
cores, so a shadow that burns CPU shows up in the primary's figures: that is
what the ratios measure. Each shadow version may use `--shadow-cpu` cores
(the server's compute budget for it, default 0.05) and have
`--shadow-queue` copies in flight; copies beyond either are dropped, and the
`dropped` column counts them. `--rate N` loads the primary open-loop at a
fixed arrival rate instead (latency corrected for coordinated omission):
the question there is whether the primary's latency distribution moves.

It asserts nothing about timing (a benchmark, not a test); it exits non-zero
only if a primary request failed (or the load generator did not run).
Bounded: rounds x 3 runs of warm-up + duration, each settle wait at most
`--settle-s`. Loopback only.

    cargo build --release -p sluice-cli -p sluice-loadtest
    .venv/bin/python loadtest/scripts/shadow_isolation.py --rounds 3 --duration 5s --report shadow.json
    .venv/bin/python loadtest/scripts/shadow_isolation.py --rate 5000 --report shadow-open.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "models"

MODEL = "scale"
PRIMARY, FAILING, SLOW = 1, 4, 5
POLICIES = {
    "a_no_shadow": {"stable": PRIMARY},
    "b_slow_shadow": {"stable": PRIMARY, "shadows": [{"version": SLOW, "percent": 100.0}]},
    "c_failing_shadow": {"stable": PRIMARY, "shadows": [{"version": FAILING, "percent": 100.0}]},
}
OUTCOMES = ("compared", "failed", "dropped")
SERIES = re.compile(r'^(sluice_shadow_requests_total|sluice_requests_total)\{([^}]*)\}\s+(\S+)\s*$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def build_repository(repo: Path):
    model = repo / MODEL
    model.mkdir(parents=True)
    for version, (src_model, src_version) in {
        PRIMARY: ("scale", 1), FAILING: ("scale_failing", 1), SLOW: ("scale_slow", 1),
    }.items():
        shutil.copytree(FIXTURES / src_model / str(src_version), model / str(version))
    # scale_failing only warms up (and so only loads) at a batch of 3k rows.
    (model / "model.toml").write_text("warmup_shapes = { x = [3, 4] }\n")


def http(base: str, method: str, path: str, body: bytes | None = None, key: str | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 60.0):
    paths = [f"/v2/models/{MODEL}/versions/{v}/ready" for v in (PRIMARY, FAILING, SLOW)]
    deadline = time.time() + timeout_s
    while paths:
        if proc.poll() is not None:
            raise SystemExit(f"sluice exited with {proc.returncode} before it was ready")
        try:
            if http(base, "GET", paths[0], timeout=2)[0] == 200:
                paths.pop(0)
                continue
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"sluice never became ready ({paths[0]})")
        time.sleep(0.05)


def set_policy(base: str, key: str, policy: dict):
    status, body = http(base, "PUT", f"/admin/models/{MODEL}/policy", json.dumps(policy).encode(), key)
    if status != 200:
        raise SystemExit(f"PUT policy {policy} -> {status}: {body.decode(errors='replace')}")


def shadow_counters(base: str) -> dict[tuple[int, str], float]:
    """{(shadow version, outcome): value} of sluice_shadow_requests_total for
    MODEL, and {(PRIMARY, "served"): ...}: the primary's successful requests
    (sluice_requests_total), which every shadow at 100% gets a copy of."""
    status, body = http(base, "GET", "/metrics")
    if status != 200:
        raise SystemExit(f"GET /metrics -> {status}")
    out = {}
    for line in body.decode().splitlines():
        m = SERIES.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2)))
        if labels.get("model") != MODEL:
            continue
        if m.group(1) == "sluice_shadow_requests_total":
            out[(int(labels["version"]), labels["outcome"])] = float(m.group(3))
        elif labels.get("version") == str(PRIMARY) and labels.get("outcome") == "success":
            key = (PRIMARY, "served")
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def settled_counters(base: str, settle_s: float) -> dict[tuple[int, str], float]:
    """The shadow counters once they stop moving (the copies still in flight
    when the load ended have finished), or after settle_s."""
    prev = shadow_counters(base)
    deadline = time.time() + settle_s
    while time.time() < deadline:
        time.sleep(0.3)
        now = shadow_counters(base)
        if now == prev:
            return now
        prev = now
    return prev


def run_load(args, base: str, pid: int, report: Path) -> dict:
    load = ["--rate", str(args.rate)] if args.rate else ["--concurrency", str(args.concurrency)]
    cmd = [args.loadtest, "run", "--url", base, "--model", MODEL, "--shape", "1,4", "--input-name", "x",
           *load, "--duration", args.duration, "--warmup", args.warmup,
           "--report", str(report), "--server-pid", str(pid), "--quiet"]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    if r.returncode != 0 or not report.is_file():
        raise SystemExit(f"sluice-loadtest failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(report.read_text())


def ratio(x: float, base: float) -> float:
    return x / base if base else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sluice", default=str(ROOT / "target/release/sluice"))
    ap.add_argument("--loadtest", default=str(ROOT / "target/release/sluice-loadtest"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s", help="measured window of each run")
    ap.add_argument("--warmup", default="1s", help="load before each window, not measured")
    ap.add_argument("--concurrency", type=int, default=8, help="closed loop: connections (the default mode)")
    ap.add_argument("--rate", type=int, help="open loop instead: requests per second on a fixed schedule "
                    "(latency corrected for coordinated omission); pick one the server sustains without shadows")
    ap.add_argument("--shadow-cpu", type=float, help="passed to sluice serve (its default: 0.05 cores)")
    ap.add_argument("--shadow-queue", type=int, help="passed to sluice serve (its default: 64)")
    ap.add_argument("--settle-s", type=float, default=15.0,
                    help="longest wait for in-flight shadow copies after a run")
    ap.add_argument("--report", help="write the JSON report here too")
    args = ap.parse_args()
    for binary in (args.sluice, args.loadtest):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary} is missing: cargo build --release -p sluice-cli -p sluice-loadtest")

    work = Path(tempfile.mkdtemp(prefix="sluice-shadow-"))
    repo = work / "models"
    build_repository(repo)
    key = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_ADMIN_KEYS"] = f"bench:{key}"
    cmd = [args.sluice, "serve", "--models", str(repo), "--http-addr", "127.0.0.1:0", "--log", "warn"]
    if args.shadow_queue is not None:
        cmd += ["--shadow-queue", str(args.shadow_queue)]
    if args.shadow_cpu is not None:
        cmd += ["--shadow-cpu", str(args.shadow_cpu)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on http://"):
            raise SystemExit(f"sluice printed {line!r} instead of its address")
        base = line[len("listening on "):]
        wait_ready(base, proc)

        runs = []
        failed = 0
        machine = None
        names = list(POLICIES)
        for rnd in range(1, args.rounds + 1):
            # Each round starts one policy later (a b c, b c a, c a b, ...), so
            # that no policy always runs first, or always right after another.
            shift = (rnd - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                set_policy(base, key, POLICIES[name])
                before = settled_counters(base, args.settle_s)
                rep = run_load(args, base, proc.pid, work / f"{name}-{rnd}.json")
                after = settled_counters(base, args.settle_s)
                shadow = {o: sum(after.get(k, 0) - before.get(k, 0) for k in after if k[1] == o)
                          for o in OUTCOMES}
                served = after.get((PRIMARY, "served"), 0) - before.get((PRIMARY, "served"), 0)
                failed += rep["errors"]
                machine = rep.get("machine")
                run = {
                    "round": rnd,
                    "policy": name,
                    "requests": rep["requests"],
                    "requests_per_s": rep["requests_per_s"],
                    "p50_us": rep["latency_us"]["p50"],
                    "p99_us": rep["latency_us"]["p99"],
                    "errors": rep["errors"],
                    "server_cpu_us_per_request": (rep.get("server_cpu") or {}).get("us_per_request"),
                    # warm-up included, like the shadow counts: with a shadow
                    # at 100%, compared + failed + dropped == primary_served.
                    "primary_served": int(served),
                    "shadow": {o: int(v) for o, v in shadow.items()},
                }
                runs.append(run)
                print(f"round {rnd} {name}: {run['requests_per_s']:.0f} req/s, p50 {run['p50_us']} us, "
                      f"p99 {run['p99_us']} us, errors {run['errors']}, shadow {run['shadow']}",
                      file=sys.stderr, flush=True)
        set_policy(base, key, POLICIES["a_no_shadow"])

        medians = {}
        for name in POLICIES:
            mine = [r for r in runs if r["policy"] == name]
            medians[name] = {m: statistics.median(r[m] for r in mine)
                             for m in ("requests_per_s", "p50_us", "p99_us")}
        ratios = {name: {m: ratio(medians[name][m], medians["a_no_shadow"][m]) for m in medians[name]}
                  for name in ("b_slow_shadow", "c_failing_shadow")}

        head = (f"{'round':>5}  {'policy':<17}{'req/s':>9}{'p50 us':>8}{'p99 us':>8}{'errors':>7}"
                f"{'cpu us/req':>11}{'served':>8}{'compared':>10}{'failed':>8}{'dropped':>9}")
        print(head)
        print("-" * len(head))
        for r in runs:
            cpu = r["server_cpu_us_per_request"]
            print(f"{r['round']:>5}  {r['policy']:<17}{r['requests_per_s']:>9.0f}{r['p50_us']:>8}{r['p99_us']:>8}"
                  f"{r['errors']:>7}{(f'{cpu:.1f}' if cpu is not None else '-'):>11}{r['primary_served']:>8}"
                  f"{r['shadow']['compared']:>10}{r['shadow']['failed']:>8}{r['shadow']['dropped']:>9}")
        print()
        print("medians over rounds, and ratios to (a):")
        for name, med in medians.items():
            rat = ratios.get(name)
            extra = (f"   ratio req/s {rat['requests_per_s']:.3f}  p50 {rat['p50_us']:.3f}  "
                     f"p99 {rat['p99_us']:.3f}") if rat else ""
            print(f"  {name:<17} req/s {med['requests_per_s']:>8.0f}  p50 {med['p50_us']:>6.0f} us  "
                  f"p99 {med['p99_us']:>6.0f} us{extra}")

        report = {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "concurrency": None if args.rate else args.concurrency,
            "rate": args.rate,
            "shadow_cpu": args.shadow_cpu if args.shadow_cpu is not None else "server default (0.05)",
            "shadow_queue": args.shadow_queue if args.shadow_queue is not None else "server default (64)",
            "policies": POLICIES,
            "runs": runs,
            "medians": medians,
            "ratios_to_no_shadow": ratios,
            "failed_primary_requests": failed,
            "machine": machine,
        }
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        return 0 if failed == 0 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
