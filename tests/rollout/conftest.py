"""Fixtures for the rollout suite: a real `sluice serve` (target/debug/sluice,
or $SLUICE_BIN) over a fresh repository of `scale` versions, with an admin
key, and a way to run the real CLI against it.

* `gateway(versions=[1, 2], log="info,ort=warn")` starts one, function-scoped,
  and stops it when the test ends. The returned `Gateway` runs
  `sluice rollout|audit ...` (`gw.cli(...)`, `gw.cli_json(...)`) with
  SLUICE_URL and SLUICE_ADMIN_KEY set for it, sends inference requests over
  urllib (`gw.infer(x)`), and polls (`gw.poll(...)`).

Everything listens on 127.0.0.1. When a test fails, its report gets the tail
of the stderr log of every server still running and the last CLI calls.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_MODELS = REPO_ROOT / "tests" / "fixtures" / "models"
SLUICE_BIN = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "debug" / "sluice"))

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0

# The name of the admin key every gateway of this suite is started with; the
# audit log records it as the actor of the changes made through the CLI.
KEY_NAME = "ops-rollout"

LIVE: list["Gateway"] = []


def pytest_sessionstart(session):
    # Fail fast, with the fix, when the binary is missing or predates rollouts.
    if not SLUICE_BIN.is_file() or not os.access(SLUICE_BIN, os.X_OK):
        raise pytest.UsageError(f"the sluice binary {SLUICE_BIN} is missing: run "
                                f"`cargo build -p sluice-cli` in {REPO_ROOT} first")
    r = subprocess.run([str(SLUICE_BIN), "rollout", "--help"], capture_output=True, text=True,
                       timeout=CLI_TIMEOUT_S)
    if r.returncode != 0:
        raise pytest.UsageError(f"`{SLUICE_BIN} rollout --help` failed: this binary has no rollout "
                                f"commands; run `cargo build -p sluice-cli`\n{r.stderr}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for g in list(LIVE):
            state = "running" if g.alive() else f"exited with {g.proc.returncode}"
            report.sections.append((f"sluice stderr (port {g.port}, {state}, last lines)", g.stderr_tail()))
            report.sections.append((f"last CLI calls against port {g.port}", g.describe_cli(6)))


def clean_env() -> dict:
    """The environment of a child: no SLUICE_* settings from the user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_BACKTRACE", "1")
    return env


def new_key(prefix: str = "rk") -> str:
    """A fresh admin key (well over the 16 characters the server requires),
    distinctive enough that grepping a log for it finds nothing by chance."""
    return f"{prefix}-{secrets.token_hex(16)}"


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """One request; (status, headers with lower-case names, body), also for 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@dataclass
class Infer:
    status: int
    version: str | None      # the sluice-model-version header
    variant: str | None      # the x-sluice-variant header
    body: dict


@dataclass
class Gateway:
    proc: subprocess.Popen
    port: int
    models_dir: Path
    stderr_path: Path
    key: str
    key_name: str = KEY_NAME
    cli_calls: list = field(default_factory=list)  # (argv, CompletedProcess)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- the process ---------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self in LIVE:
            LIVE.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_text())
        except OSError as e:
            return f"(cannot read {self.stderr_path}: {e})"
        return f"(full log: {self.stderr_path})\n" + "\n".join(text.splitlines()[-lines:])

    # --- the CLI ------------------------------------------------------------

    def cli(self, *args, key: str | None = "default", env: dict | None = None,
            timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Runs `sluice ARGS...` with SLUICE_URL pointing here and
        SLUICE_ADMIN_KEY = this gateway's key (`key=` another one; None: no
        key in the environment)."""
        child_env = clean_env()
        child_env["SLUICE_URL"] = self.url
        if key == "default":
            child_env["SLUICE_ADMIN_KEY"] = self.key
        elif key is not None:
            child_env["SLUICE_ADMIN_KEY"] = key
        child_env.update(env or {})
        argv = [str(SLUICE_BIN), *map(str, args)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env,
                           stdin=subprocess.DEVNULL)
        self.cli_calls.append((argv, r))
        return r

    def cli_ok(self, *args, **kw) -> subprocess.CompletedProcess:
        r = self.cli(*args, **kw)
        assert r.returncode == 0, (f"`sluice {' '.join(map(str, args))}` exited with {r.returncode}\n"
                                   f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def cli_json(self, *args, **kw):
        r = self.cli_ok(*args, **kw)
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"`sluice {' '.join(map(str, args))}` printed no JSON: {r.stdout!r}") from e

    def describe_cli(self, last: int) -> str:
        out = []
        for argv, r in self.cli_calls[-last:]:
            out.append(f"$ {' '.join(argv[1:])}  -> {r.returncode}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        return "\n".join(out) or "(none)"

    # --- HTTP ---------------------------------------------------------------

    def infer(self, x: list[float], headers: dict | None = None) -> Infer:
        """POST /v2/models/scale/infer with one row x (4 floats), JSON."""
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "data": x}]}).encode()
        status, h, data = http(self.url + "/v2/models/scale/infer", "POST", body,
                               {"Content-Type": "application/json", **(headers or {})})
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {"raw": data.decode(errors="replace")}
        return Infer(status, h.get("sluice-model-version"), h.get("x-sluice-variant"), doc)

    def admin(self, method: str, path: str, body=None, key: str | None = None) -> tuple[int, dict]:
        """A direct admin API call (to learn what the server itself answers)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key or self.key}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        status, _, raw = http(self.url + path, method, data, headers)
        return status, json.loads(raw)

    # --- waiting ------------------------------------------------------------

    @staticmethod
    def poll(fn, what: str, timeout: float = 30.0, interval: float = 0.2):
        """Calls fn() until it returns something truthy; fails after timeout
        seconds with `what` and the last value. A bound, not a measurement."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = fn()
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f}s; last: {last!r}")
            time.sleep(interval)


def make_repository(dest: Path, versions) -> Path:
    """dest/scale/<v>/model.onnx for each fixture version v of `scale`."""
    for v in versions:
        shutil.copytree(FIXTURE_MODELS / "scale" / str(v), dest / "scale" / str(v))
    return dest


def start_gateway(models_dir: Path, log_dir: Path, versions, log: str) -> Gateway:
    key = new_key()
    env = clean_env()
    env["SLUICE_ADMIN_KEYS"] = f"{KEY_NAME}:{key}"
    args = [str(SLUICE_BIN), "serve", "--models", str(models_dir), "--http-addr", "127.0.0.1:0",
            "--rescan-interval-ms", "500", "--log", log]
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"sluice-{time.monotonic_ns()}.stderr.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=REPO_ROOT, env=env)
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump():
        # Keep reading stdout so the child never blocks on a full pipe.
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def fail(why: str):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        tail = stderr_path.read_text(errors="replace")[-6000:]
        raise RuntimeError(f"sluice serve {why}\ncommand: {' '.join(args)}\n--- stderr ---\n{tail}")

    deadline = time.monotonic() + READY_TIMEOUT_S
    first = None
    while first is None and time.monotonic() < deadline:
        try:
            first = lines.get(timeout=0.2)
            if first is None:
                fail(f"closed its stdout (exit code {proc.poll()}) before printing its address")
        except queue.Empty:
            if proc.poll() is not None:
                fail(f"exited with {proc.returncode} before printing its address")
    if first is None:
        fail("printed no 'listening on' line")
    m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", first.strip())
    if not m:
        fail(f"printed {first!r} instead of 'listening on http://127.0.0.1:PORT'")
    gw = Gateway(proc=proc, port=int(m.group(1)), models_dir=models_dir, stderr_path=stderr_path, key=key)
    LIVE.append(gw)

    pending = [f"/v2/models/scale/versions/{v}/ready" for v in versions]
    while pending:
        if proc.poll() is not None:
            gw.stop()
            fail(f"exited with {proc.returncode} before every version was ready")
        try:
            if http(gw.url + pending[0], timeout=2.0)[0] == 200:
                pending.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            gw.stop()
            fail(f"{pending[0]} was not 200 within {READY_TIMEOUT_S}s")
        time.sleep(0.05)
    return gw


@pytest.fixture
def gateway(tmp_path):
    """gateway(versions=[1, 2], log=...) starts a Sluice over a repository of
    those `scale` versions in tmp_path, with an admin key named KEY_NAME;
    each is stopped at the end of the test."""
    started = []

    def make(versions=(1, 2), log="info,ort=warn", name="repo") -> Gateway:
        models = make_repository(tmp_path / name / "models", versions)
        gw = start_gateway(models, tmp_path / name / "logs", versions, log)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        code = gw.stop()
        assert code == 0, f"sluice exited with {code} on SIGTERM\n{gw.stderr_tail()}"
