"""Helpers shared by the OIP end-to-end tests: starting and stopping a real
`sluice serve`, raw HTTP over http.client and raw sockets, and building
request bodies (JSON and Triton's binary tensor extension) by hand.

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_MODELS = REPO_ROOT / "tests" / "fixtures" / "models"
CORRUPT_ONNX = REPO_ROOT / "tests" / "fixtures" / "corrupt.onnx"
DEMO_MODELS = REPO_ROOT / "models"
SLUICE_BIN = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "debug" / "sluice"))

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

# models/generate.py is importable: write_scale_model, write_identity_model.
if str(DEMO_MODELS) not in sys.path:
    sys.path.insert(0, str(DEMO_MODELS))


def require_binary() -> Path:
    if not SLUICE_BIN.is_file() or not os.access(SLUICE_BIN, os.X_OK):
        raise RuntimeError(
            f"the sluice binary {SLUICE_BIN} is missing: run `cargo build` in {REPO_ROOT} first"
        )
    return SLUICE_BIN


def clean_env() -> dict:
    """The environment for a child sluice: no SLUICE_* settings leaking in
    from the user's shell (they would override the defaults the tests rely
    on), quiet enough logs to keep in a file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.setdefault("RUST_BACKTRACE", "1")
    env["NO_COLOR"] = "1"  # plain logs, readable in a failure report
    return env


# --------------------------------------------------------------------------
# Model repositories


def copy_models(dest: Path, only: dict | None = None, demo: bool = True) -> Path:
    """Copies the fixture models (and the demo models) into `dest`.

    `only`: {model: [versions]} copies just those versions of those models
    (from the fixtures or the demo models), e.g. {"scale": ["1"]}.
    """
    dest.mkdir(parents=True, exist_ok=True)
    sources = [FIXTURE_MODELS] + ([DEMO_MODELS] if demo or only else [])

    def find(model: str) -> Path:
        for src in sources:
            if (src / model).is_dir():
                return src / model
        raise FileNotFoundError(f"no fixture or demo model named {model!r}")

    if only is not None:
        for model, versions in only.items():
            src = find(model)
            (dest / model).mkdir(exist_ok=True)
            if (src / "model.toml").is_file():
                shutil.copy2(src / "model.toml", dest / model / "model.toml")
            for v in versions:
                shutil.copytree(src / str(v), dest / model / str(v))
        return dest
    for src in sources:
        for d in sorted(src.iterdir()):
            if d.is_dir() and not d.name.startswith((".", "_")) and any(
                c.is_dir() and c.name.isdigit() for c in d.iterdir()
            ):
                shutil.copytree(d, dest / d.name)
    return dest


def stage_version(models_dir: Path, model: str, src_file: Path, version: int) -> Path:
    """Adds `src_file` as `models_dir/model/version/model.onnx` atomically, the
    way `sluice models publish` does (copy + fsync into a hidden staging
    directory in the model directory, then rename), but without a manifest.
    Used where a test must not depend on the publish CLI."""
    model_dir = models_dir / model
    model_dir.mkdir(parents=True, exist_ok=True)
    stage = model_dir / f".tmp-publish-test-{os.getpid()}-{time.monotonic_ns()}"
    stage.mkdir()
    with open(src_file, "rb") as f_in, open(stage / "model.onnx", "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
        f_out.flush()
        os.fsync(f_out.fileno())
    final = model_dir / str(version)
    os.rename(stage, final)
    return final


def publish_cli(models_dir: Path, model: str, src_file: Path, version: int | None = None,
                timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs `sluice models publish MODEL FILE [--version N] --models DIR`."""
    cmd = [str(require_binary()), "models", "publish", model, str(src_file), "--models", str(models_dir)]
    if version is not None:
        cmd += ["--version", str(version)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env())


# --------------------------------------------------------------------------
# pytest hooks shared by the suites that start servers with these helpers
# (each suite's conftest imports them, or calls them from its own)


def pytest_sessionstart(session):
    """Fail fast, with the fix, when the binary is not built."""
    import pytest
    try:
        require_binary()
    except RuntimeError as e:
        raise pytest.UsageError(str(e))


def server_log_sections(report):
    """Attaches the stderr tail of every server still running to a failed
    test's report."""
    if report.failed:
        for s in list(LIVE_SERVERS):
            state = "running" if s.alive() else f"exited with {s.proc.returncode}"
            report.sections.append(
                (f"sluice stderr (port {s.port}, {state}, last lines)", s.stderr_tail()))


def _makereport(item, call):
    outcome = yield
    server_log_sections(outcome.get_result())


def _hookwrapper(fn):
    import pytest
    return pytest.hookimpl(hookwrapper=True)(fn)


pytest_runtest_makereport = _hookwrapper(_makereport)


def _fixture(fn=None, **kw):
    import pytest
    return pytest.fixture(fn, **kw) if fn else pytest.fixture(**kw)


@_fixture(scope="session")
def server(tmp_path_factory):
    """A server over every fixture and demo model, for tests that only read
    (and infer); graceful shutdown on SIGTERM is checked when it stops."""
    root = tmp_path_factory.mktemp("session-repo")
    models = copy_models(root / "models")
    s = start_server(models, root / "logs")
    yield s
    code = s.stop()
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{s.stderr_tail()}"


@_fixture
def make_server(tmp_path):
    """make_server(only={"scale": ["1"]}, extra_args=[...], demo=True) starts
    a server over a fresh repository in tmp_path; it is stopped at the end of
    the test."""
    started = []

    def make(only=None, extra_args=(), demo=True, name="repo"):
        models = copy_models(tmp_path / name / "models", only=only, demo=demo)
        s = start_server(models, tmp_path / name / "logs", extra_args=extra_args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


# --------------------------------------------------------------------------
# The server process

LIVE_SERVERS: list["Server"] = []

# Lines shown at the end of the run (conftest's pytest_terminal_summary),
# e.g. the request totals of the load tests.
SUMMARY: list[str] = []


def report(line: str):
    print(line)
    SUMMARY.append(line)


@dataclass
class Server:
    proc: subprocess.Popen
    host: str
    port: int
    models_dir: Path
    stderr_path: Path
    args: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, **kw):
        import tritonclient.http as httpclient

        kw.setdefault("connection_timeout", 30.0)
        kw.setdefault("network_timeout", 30.0)
        return httpclient.InferenceServerClient(self.hostport, **kw)

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.stderr_path}: {e})"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return f"(full log: {self.stderr_path})\n" + "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a bounded wait. Returns the exit code."""
        if self in LIVE_SERVERS:
            LIVE_SERVERS.remove(self)
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

    def request(self, method, path, body=None, headers=None, timeout=30.0):
        return http_request(self.port, method, path, body, headers, timeout)


def start_server(models_dir: Path, log_dir: Path, extra_args=(), ready_timeout=READY_TIMEOUT_S) -> Server:
    binary = require_binary()
    args = [
        str(binary), "serve",
        "--models", str(models_dir),
        "--http-addr", "127.0.0.1:0",
        "--rescan-interval-ms", "500",
        *map(str, extra_args),
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"sluice-{time.monotonic_ns()}.stderr.log"
    stderr_file = open(stderr_path, "wb")
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=stderr_file, stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT, env=clean_env(),
    )
    stderr_file.close()

    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump():
        # Keeps reading stdout so the child never blocks on a full pipe.
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

    deadline = time.monotonic() + ready_timeout
    first = None
    while time.monotonic() < deadline:
        try:
            first = lines.get(timeout=0.2)
            break
        except queue.Empty:
            if proc.poll() is not None:
                fail(f"exited with {proc.returncode} before printing its address")
    if first is None:
        fail(f"printed no 'listening on' line within {ready_timeout}s")
    prefix = "listening on http://"
    if not first.startswith(prefix):
        fail(f"printed {first!r} instead of 'listening on http://127.0.0.1:PORT'")
    host, _, port = first[len(prefix):].rpartition(":")
    server = Server(proc=proc, host=host, port=int(port), models_dir=models_dir,
                    stderr_path=stderr_path, args=args)
    assert host == "127.0.0.1", first

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"exited with {proc.returncode} before it was ready")
        try:
            status, _, _ = http_request(server.port, "GET", "/v2/health/ready", timeout=2.0)
            if status == 200:
                LIVE_SERVERS.append(server)
                return server
        except OSError:
            pass
        time.sleep(0.1)
    fail(f"was not ready (GET /v2/health/ready == 200) within {ready_timeout}s")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Raw HTTP


def http_request(port, method, path, body=None, headers=None, timeout=30.0):
    """One request over a fresh http.client connection to 127.0.0.1:port.
    Returns (status, headers with lower-case names, body bytes). No
    Content-Type is sent unless `headers` has one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def error_message(status, headers, body) -> str:
    """The `error` of a `{"error": ...}` body; fails the test if the body is
    not that shape."""
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:500])
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise AssertionError(f"error body of a {status} is not JSON: {body[:500]!r}") from e
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], (
        f"error body of a {status} is not {{\"error\": \"...\"}}: {doc!r}"
    )
    return doc["error"]


def raw_exchange(port, data: bytes, timeout=10.0, send_all=True):
    """Sends raw bytes on a TCP connection and reads one HTTP/1.1 response
    (Content-Length or chunked). Returns (status, headers, body). A socket
    timeout raises socket.timeout (the server did not answer in time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        if send_all:
            s.sendall(data)
        return read_response(s)


def send_while_reading(port, head: bytes, chunks, timeout=20.0):
    """Sends `head` and then each of `chunks` on a fresh connection from a
    background thread while reading the response on this one, so a server
    that answers (say 413) and closes before the whole body is sent is still
    heard. Returns (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    s.sendall(head)
    stop = threading.Event()

    def send():
        try:
            for c in chunks:
                if stop.is_set():
                    return
                s.sendall(c)
        except OSError:
            pass  # the server answered and closed: expected for refusals

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        return read_response(s)
    finally:
        stop.set()
        t.join(timeout=timeout)
        s.close()


def read_response(s: socket.socket):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response header: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:n]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += s.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += s.recv(65536)
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                return status, headers, body
    return status, headers, rest


# --------------------------------------------------------------------------
# Request bodies


def json_body(inputs, outputs=None, **extra) -> bytes:
    doc = {"inputs": inputs, **extra}
    if outputs is not None:
        doc["outputs"] = outputs
    return json.dumps(doc).encode()


def binary_body(header: dict, *blobs: bytes):
    """A Triton binary-extension body: returns (body, headers) with
    Inference-Header-Content-Length set to the JSON length."""
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def split_binary_response(headers, body):
    """(json header dict, binary section bytes) of a response."""
    n = headers.get("inference-header-content-length")
    if n is None:
        return json.loads(body), b""
    n = int(n)
    return json.loads(body[:n]), body[n:]


def serialize_bytes_elements(elements) -> bytes:
    out = b""
    for e in elements:
        out += len(e).to_bytes(4, "little") + e
    return out


def infer_scale_raw(port, x, version=None, timeout=30.0):
    """POSTs a JSON infer to `scale` and returns (status, response dict or
    error body)."""
    path = "/v2/models/scale/infer" if version is None else f"/v2/models/scale/versions/{version}/infer"
    body = json_body([{"name": "x", "shape": [len(x), 4], "datatype": "FP32", "data": x}])
    status, headers, data = http_request(port, "POST", path, body,
                                         {"Content-Type": "application/json"}, timeout)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data


# --------------------------------------------------------------------------
# Load generation and repository polling for the hot-swap tests

X = [[1.0, 2.0, 3.0, 4.0]]
SCALE_BODY = json_body([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}])
WAIT_FOR_VERSION_S = 15.0
HARD_LIMIT_S = 120.0


def publish(server, model, src, version):
    """`sluice models publish MODEL FILE --version N --models DIR`, as a user
    would publish a new version next to a running server."""
    done = publish_cli(server.models_dir, model, src, version)
    assert done.returncode == 0, (
        f"sluice models publish failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    assert f"version {version}" in done.stdout, done.stdout


class Load:
    """`threads` clients, each on its own keep-alive connection, POSTing
    x = [[1, 2, 3, 4]] to `scale` (no version) until stopped."""

    def __init__(self, port, threads=8, path="/v2/models/scale/infer"):
        self.port, self.path = port, path
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.requests = 0
        self.per_version = collections.Counter()
        self.failures = []      # (what, detail)
        self.wrong = []         # (version, y)
        self.started = time.monotonic()
        self.deadline = self.started + HARD_LIMIT_S
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        try:
            self._loop()
        except BaseException as e:  # a bug here must not pass for "no traffic"
            with self.lock:
                self.failures.append(("load thread crashed", repr(e)))
            raise

    def _loop(self):
        conn = None
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", self.path, SCALE_BODY, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.requests += 1
                    self.failures.append(("exception", repr(e)))
                if conn is not None:
                    conn.close()
                conn = None
                continue
            with self.lock:
                self.requests += 1
                if resp.status != 200:
                    self.failures.append((resp.status, data[:300]))
                    continue
                try:
                    doc = json.loads(data)
                    version = doc["model_version"]
                    y = doc["outputs"][0]["data"]
                    header_version = resp.getheader("sluice-model-version")
                except (ValueError, KeyError, IndexError) as e:
                    self.failures.append(("bad body", repr(e), data[:300]))
                    continue
                self.per_version[version] += 1
                k = int(version)
                if y != [v * k for v in X[0]] or header_version != version:
                    self.wrong.append((version, header_version, y))
        if conn is not None:
            conn.close()

    def seen(self, version) -> bool:
        with self.lock:
            return self.per_version[str(version)] > 0

    def wait_for_version(self, version, timeout=WAIT_FOR_VERSION_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen(version):
                return True
            with self.lock:
                if self.failures:
                    return False
            if not any(t.is_alive() for t in self.threads):
                return False
            time.sleep(0.02)
        return False

    def count(self):
        with self.lock:
            return self.requests

    def run_for(self, seconds):
        """Lets the load run for `seconds` more (and at least a few requests)."""
        start = self.count()
        deadline = time.monotonic() + max(seconds, 0)
        while time.monotonic() < deadline or self.count() < start + 20:
            if time.monotonic() > deadline + 10:
                break
            time.sleep(0.02)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=35)
        self.elapsed = time.monotonic() - self.started

    def summary(self):
        return (f"requests={self.requests} failed={len(self.failures)} wrong={len(self.wrong)} "
                f"per_version={dict(sorted(self.per_version.items(), key=lambda kv: int(kv[0])))} "
                f"elapsed={getattr(self, 'elapsed', 0):.1f}s")

    def check(self):
        assert not self.failures, f"{len(self.failures)} failed requests, first: {self.failures[:5]}\n{self.summary()}"
        assert not self.wrong, f"{len(self.wrong)} answers not x*version, first: {self.wrong[:5]}\n{self.summary()}"


def versions_on_disk(models_dir, model="scale"):
    return sorted(int(p.name) for p in (models_dir / model).iterdir() if p.is_dir() and p.name.isdigit())


def index_rows(server, model="scale"):
    status, _, body = server.request("POST", "/v2/repository/index", b"")
    assert status == 200
    return {r["version"]: r for r in json.loads(body) if r["name"] == model}


def wait_for_index(server, version, state, timeout=WAIT_FOR_VERSION_S):
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = index_rows(server).get(str(version))
        if row is not None and row["state"] == state:
            return row
        time.sleep(0.05)
    _fail(f"scale version {version} did not become {state} within {timeout}s; last row: {row}")




def _fail(message):
    import pytest

    pytest.fail(message)
