"""The whole loop with the real binary: `sluice serve` captures sampled
requests into its in-process drift collector, which finds a shift of half
a standard deviation in one feature, ranks it first, raises the alert, keeps
everything across a restart, and shows it on its page (checked in a real
headless Chromium); a standalone
`sluice collector` that goes away costs the gateway nothing, and capture
resumes when it is back.

Loopback only; bounded (a few thousand requests); no timing assertions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, SLUICE_BIN

IRIS = REPO_ROOT / "models" / "iris"
# Per-feature means and standard deviations of the demo iris data (setosa).
MEANS = np.array([5.006, 3.428, 1.462, 0.246])
STDS = np.array([0.352, 0.379, 0.174, 0.105])


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Proc:
    def __init__(self, args: list[str], log: Path, pattern: str):
        self.log = log
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log, "wb"),
                                     stdin=subprocess.DEVNULL, cwd=log.parent)
        deadline = time.monotonic() + 30
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            m = re.search(pattern + r" (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
            if not line and self.proc.poll() is not None:
                break
        assert self.url, f"{args[1]} did not start:\n{log.read_text()[-3000:]}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_ready(url: str):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http("GET", url + "/v2/health/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the gateway never became ready")


def headless_dom(url: str, tmp: Path) -> str:
    """The page's DOM as Debian's Chromium (headless) builds it, and a
    screenshot of it in tmp/page.png. scripts/setup-chromium.sh installs it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run scripts/setup-chromium.sh")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp / 'chromium'}", "--window-size=1400,1000"]
    shot = subprocess.run([chromium, *flags, f"--screenshot={tmp / 'page.png'}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def repository(tmp: Path) -> Path:
    repo = tmp / "models"
    shutil.copytree(IRIS, repo / "iris")
    (repo / "iris" / "model.toml").write_text("[capture]\nsample_rate = 1.0\n")
    return repo


def send(url: str, rng: np.random.Generator, batches: int, shift: float = 0.0, rows: int = 20) -> None:
    for _ in range(batches):
        x = rng.normal(MEANS, STDS, size=(rows, 4))
        x[:, 2] += shift * STDS[2]
        body = json.dumps({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32",
                                       "data": x.astype(np.float32).ravel().tolist()}]}).encode()
        status, answer = http("POST", url + "/v2/models/iris/versions/2/infer", body,
                              {"content-type": "application/json"})
        assert status == 200, answer[:300]


def report(url: str) -> dict | None:
    """Version 2's drift report; None until the collector has records of it
    (the gateway exports them in batches, after the requests)."""
    status, body = http("GET", url + "/v1/models/iris/drift")
    if status == 404:
        return None
    assert status == 200, body[:300]
    return json.loads(body)["versions"].get("2")


def until(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def serve_args(repo: Path, store: Path, *extra: str) -> list[str]:
    return [str(SLUICE_BIN), "serve", "--models", str(repo), "--http-addr", "127.0.0.1:0",
            "--collector-store", str(store), "--drift-window-rows", "200",
            "--drift-reference-rows", "400", *extra]


def test_in_process_collector_finds_a_shift_and_keeps_it_across_a_restart(tmp_path):
    repo = repository(tmp_path)
    store = tmp_path / "collector.jsonl"
    rng = np.random.default_rng(12)
    gw = Proc(serve_args(repo, store), tmp_path / "serve.log", "listening on")
    try:
        wait_ready(gw.url)
        # 400 rows become the reference, then 3 windows like it.
        send(gw.url, rng, 20)
        send(gw.url, rng, 30)
        v = until("three windows", lambda: (r := report(gw.url)) and len(r["windows"]) >= 3 and r)
        assert v["reference"]["rows"] == 400
        assert v["alert"] is None, v["alert"]
        # Half a standard deviation on input[2]: the alert within two windows,
        # input[2] the most drifted feature.
        send(gw.url, rng, 20, shift=0.5)
        v = until("the alert", lambda: (r := report(gw.url)) and r["alert"] and r)
        assert v["alert"]["features"][0] == "input[2]", v["alert"]
        assert v["alert"]["window"] - 3 < 2, v["alert"]
        status, alerts = http("GET", gw.url + "/v1/alerts")
        assert status == 200 and json.loads(alerts)["alerts"][0]["model"] == "iris"
        # The drift metrics, in a format Prometheus's own checker accepts.
        status, metrics = http("GET", gw.url + "/v1/metrics")
        assert status == 200
        metrics = metrics.decode()
        assert 'sluice_drift_alert{model="iris",version="2"} 1' in metrics, metrics
        assert re.search(r'sluice_drift_feature_drifted\{model="iris",version="2",feature="input\[2\]",'
                         r'method="\w+"\} 1', metrics), metrics
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True,
                                   text=True, timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr
        status, page = http("GET", gw.url + "/")
        assert status == 200
        page = page.decode()
        assert 'class="chart timeline"' in page and 'class="chart distribution"' in page
        assert "<script" not in page, "the page must load nothing"
        # And in a real browser: Chromium loads it and finds the charts.
        dom = headless_dom(gw.url + "/", tmp_path)
        assert dom.count('class="chart timeline"') == 1, dom[:2000]
        assert dom.count('class="chart distribution"') >= 1, dom[:2000]
        assert "<polyline" in dom and "<rect" in dom, dom[:2000]
        assert (tmp_path / "page.png").stat().st_size > 10_000, "the screenshot is blank"
        before = report(gw.url)
    finally:
        gw.stop()
    # A restart over the same store: nothing lost.
    gw = Proc(serve_args(repo, store), tmp_path / "serve2.log", "listening on")
    try:
        wait_ready(gw.url)
        after = report(gw.url)
        assert after["windows"] == before["windows"]
        assert after["alert"] == before["alert"]
        assert after["reference"] == before["reference"]
    finally:
        gw.stop()


def test_a_collector_that_goes_away_costs_the_gateway_nothing(tmp_path):
    repo = repository(tmp_path)
    store = tmp_path / "standalone.jsonl"
    collector = Proc([str(SLUICE_BIN), "collector", "--listen", "127.0.0.1:0", "--collector-store",
                      str(store), "--drift-window-rows", "200", "--drift-reference-rows", "400"],
                     tmp_path / "collector.log", "collector on")
    port = collector.url.rsplit(":", 1)[1]
    gw = Proc([str(SLUICE_BIN), "serve", "--models", str(repo), "--http-addr", "127.0.0.1:0",
               "--capture-url", f"{collector.url}/v1/events"], tmp_path / "gw.log", "listening on")
    rng = np.random.default_rng(5)
    try:
        wait_ready(gw.url)
        # A reference uploaded with the CLI, from a CSV.
        csv = tmp_path / "golden.csv"
        x = rng.normal(MEANS, STDS, size=(500, 4))
        csv.write_text("a,b,c,d\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n")
        r = subprocess.run([str(SLUICE_BIN), "drift", "reference", "set", "iris", "--version", "2",
                            str(csv), "--input", "input", "--url", collector.url],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "500 rows" in r.stdout, r.stdout
        # Two gateways feed it at once.
        gw2 = Proc([str(SLUICE_BIN), "serve", "--models", str(repo), "--http-addr", "127.0.0.1:0",
                    "--capture-url", f"{collector.url}/v1/events", "--capture-source", "gw-2"],
                   tmp_path / "gw2.log", "listening on")
        try:
            wait_ready(gw2.url)
            send(gw.url, rng, 5)
            send(gw2.url, rng, 5)

            def accepted():
                text = http("GET", collector.url + "/v1/metrics")[1].decode()
                m = re.search(r'^sluice_collector_events_total\{outcome="accepted"\} (\S+)$', text, re.M)
                return m and float(m.group(1)) >= 10 and float(m.group(1))
            assert until("both gateways' records", accepted) == 10
        finally:
            gw2.stop()
        v = until("a window", lambda: (s := http("GET", collector.url + "/v1/models/iris/drift"))[0] == 200
                  and (d := json.loads(s[1])["versions"]["2"])["windows"] and d)
        assert v["reference"]["source"] == "golden.csv"

        # The collector goes away: every request still answers.
        collector.stop()
        send(gw.url, rng, 30)
        status, metrics = http("GET", gw.url + "/metrics")
        text = metrics.decode()
        lost = sum(float(m.group(1)) for m in re.finditer(
            r'sluice_capture_records_total\{model="iris",outcome="(?:dropped|failed)"\} (\S+)', text))
        pending = float(re.search(r"^sluice_capture_queue_depth (\S+)$", text, re.M).group(1))
        assert lost + pending > 0, "records for a dead collector are neither dropped, failed nor pending"

        # Back on the same port and store: capture resumes without a restart.
        collector = Proc([str(SLUICE_BIN), "collector", "--listen", f"127.0.0.1:{port}", "--collector-store",
                          str(store), "--drift-window-rows", "200", "--drift-reference-rows", "400"],
                         tmp_path / "collector2.log", "collector on")
        windows_before = len(v["windows"])
        send(gw.url, rng, 20)
        until("new windows after the collector came back", lambda: len(json.loads(
            http("GET", collector.url + "/v1/models/iris/drift")[1])["versions"]["2"]["windows"]) > windows_before)
    finally:
        gw.stop()
        collector.stop()
