"""Helpers for the telemetry end-to-end tests (tests/telemetry).

* starting `sluice serve` with the telemetry flags (reusing tests/oip's
  oiphelpers for repositories and raw HTTP) and reading both address lines;
* a parser for the Prometheus text format 0.0.4 and OpenMetrics 1.0
  (exemplars included), and a parser for the tables of
  docs/specs/instrumentation.md;
* real OTLP trace receivers, gRPC and HTTP/protobuf, built on the official
  protobuf definitions (PyPI `opentelemetry-proto`) and `grpcio`;
* a real Prometheus on a free loopback port and its HTTP API.

Everything here talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import gzip
import json
import math
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
import urllib.parse
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SPEC = REPO_ROOT / "docs" / "specs" / "instrumentation.md"

# tests/oip/oiphelpers.py: copy_models, http_request, Server, LIVE_SERVERS...
_OIP = REPO_ROOT / "tests" / "oip"
if str(_OIP) not in sys.path:
    sys.path.insert(0, str(_OIP))
import oiphelpers as h  # noqa: E402

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

# The flags the implementation of the spec adds to `sluice serve`.
TELEMETRY_FLAGS = ("--metrics-addr", "--otlp-endpoint", "--otlp-protocol", "--trace-sample-ratio")


def missing_telemetry_flags() -> list[str]:
    """The telemetry flags `sluice serve --help` does not list (all of them
    until the implementation lands)."""
    done = subprocess.run([str(h.require_binary()), "serve", "--help"], capture_output=True,
                          text=True, timeout=30, env=child_env())
    return [f for f in TELEMETRY_FLAGS if f not in done.stdout]


def child_env() -> dict:
    """oiphelpers' environment (no SLUICE_*), and also no OTEL_* settings
    and no proxies from the user's shell: the exporter must send to the
    receiver on loopback that the test names, nowhere else."""
    env = {k: v for k, v in h.clean_env().items()
           if not k.startswith("OTEL_") and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.1):
    """Calls pred() until it returns something truthy or `timeout` seconds
    pass; returns the last value."""
    deadline = time.monotonic() + timeout
    value = pred()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = pred()
    return value


# --------------------------------------------------------------------------
# W3C trace context


def new_trace_id() -> str:
    while True:
        t = os.urandom(16).hex()
        if int(t, 16):
            return t


def new_span_id() -> str:
    while True:
        s = os.urandom(8).hex()
        if int(s, 16):
            return s


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None):
    """(trace_id, span_id, flags) of a traceparent header, or None."""
    if value is None:
        return None
    m = TRACEPARENT_RE.match(value.strip())
    if not m:
        return None
    return m.group(2), m.group(3), m.group(4)


# --------------------------------------------------------------------------
# The server process


@dataclass
class TServer(h.Server):
    metrics_port: int | None = None
    stdout_lines: list = field(default_factory=list)

    @property
    def metrics_hostport(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def metrics(self, accept: str | None = None, port: int | None = None, timeout: float = 10.0):
        """GET /metrics on the metrics port (or `port`): (status, headers, text)."""
        headers = {"Accept": accept} if accept else {}
        status, hdrs, body = h.http_request(port or self.metrics_port or self.port, "GET",
                                            "/metrics", headers=headers, timeout=timeout)
        return status, hdrs, body.decode("utf-8", errors="replace")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def start_sluice(models_dir: Path, log_dir: Path, extra_args=(), metrics: bool = False,
                 env: dict | None = None, ready_timeout: float = READY_TIMEOUT_S) -> TServer:
    """Starts `sluice serve` on 127.0.0.1:0 (and `--metrics-addr
    127.0.0.1:0` when `metrics`), reads `listening on http://...` (and
    `metrics on http://...`) from stdout, in either order, and waits for
    /v2/health/ready. `env`: extra environment variables (e.g. OTEL_*)."""
    binary = h.require_binary()
    args = [str(binary), "serve", "--models", str(models_dir), "--http-addr", "127.0.0.1:0",
            "--rescan-interval-ms", "500"]
    if metrics:
        args += ["--metrics-addr", "127.0.0.1:0"]
    args += [str(a) for a in extra_args]
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"sluice-{time.monotonic_ns()}.stderr.log"
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr_file,
                                stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env={**child_env(), **(env or {})})
    lines: "queue.Queue[str | None]" = queue.Queue()
    seen: list[str] = []

    def pump():
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            seen.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def fail(why: str):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        tail = stderr_path.read_text(errors="replace")[-6000:]
        raise RuntimeError(f"sluice serve {why}\ncommand: {' '.join(args)}\nstdout: {seen!r}\n"
                           f"--- stderr ---\n{tail}")

    deadline = time.monotonic() + ready_timeout
    http_port = metrics_port = None
    while time.monotonic() < deadline and (http_port is None or (metrics and metrics_port is None)):
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                fail(f"exited with {proc.returncode} before printing its address(es)")
            continue
        if line is None:
            fail(f"closed stdout (exit code {proc.poll()}) before printing its address(es)")
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            http_port = int(m.group(1))
            continue
        m = re.fullmatch(r"metrics on http://127\.0\.0\.1:(\d+)", line)
        if m:
            metrics_port = int(m.group(1))
    if http_port is None:
        fail(f"printed no 'listening on http://127.0.0.1:PORT' line within {ready_timeout}s")
    if metrics and metrics_port is None:
        fail(f"was started with --metrics-addr 127.0.0.1:0 but printed no "
             f"'metrics on http://127.0.0.1:PORT' line within {ready_timeout}s")
    server = TServer(proc=proc, host="127.0.0.1", port=http_port, models_dir=models_dir,
                     stderr_path=stderr_path, args=args, metrics_port=metrics_port,
                     stdout_lines=seen)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"exited with {proc.returncode} before it was ready")
        try:
            status, _, _ = h.http_request(http_port, "GET", "/v2/health/ready", timeout=2.0)
            if status == 200:
                h.LIVE_SERVERS.append(server)
                return server
        except OSError:
            pass
        time.sleep(0.05)
    fail(f"was not ready (GET /v2/health/ready == 200) within {ready_timeout}s")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Requests

SCALE_X = [[1.0, 2.0, 3.0, 4.0]]


def scale_body(rows=1, cols=4) -> bytes:
    data = [[float(c + 1) for c in range(cols)] for _ in range(rows)]
    return h.json_body([{"name": "x", "shape": [rows, cols], "datatype": "FP32", "data": data}])


def infer_path(model: str, version=None) -> str:
    if version is None:
        return f"/v2/models/{model}/infer"
    return f"/v2/models/{model}/versions/{version}/infer"


def post_infer(port, model="scale", version=None, body=None, headers=None, timeout=30.0):
    """A JSON infer over a fresh connection: (status, headers, body bytes)."""
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    return h.http_request(port, "POST", infer_path(model, version),
                          body if body is not None else scale_body(), hdrs, timeout)


# --------------------------------------------------------------------------
# Prometheus text format 0.0.4 and OpenMetrics 1.0


@dataclass
class Sample:
    name: str
    labels: dict
    value: float
    timestamp: float | None
    exemplar: dict | None  # {"labels": {...}, "value": float, "timestamp": float|None}
    line: str


@dataclass
class Exposition:
    types: dict      # family name (as in # TYPE) -> type
    helps: dict      # family name -> help text
    units: dict      # family name -> unit (OpenMetrics)
    samples: list    # [Sample]
    eof: bool        # ended with "# EOF"
    errors: list     # lines that did not parse

    def names(self) -> set:
        return {s.name for s in self.samples}

    def find(self, name, **labels) -> list:
        return [s for s in self.samples if s.name == name
                and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name, **labels) -> float:
        """The sum of the matching samples' values (0 when none match)."""
        return sum(s.value for s in self.find(name, **labels))


_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _parse_labels(text: str, i: int):
    """Parses `{a="b",...}` starting at text[i] == "{"; returns (dict, index
    after the closing brace)."""
    assert text[i] == "{"
    i += 1
    labels = {}
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        m = _LABEL_NAME_RE.match(text, i)
        if not m:
            raise ValueError(f"bad label name at column {i}")
        name = m.group(0)
        i = m.end()
        if text[i:i + 2] != '="':
            raise ValueError(f"expected =\" after label {name!r} at column {i}")
        i += 2
        value = []
        while True:
            if i >= len(text):
                raise ValueError("unterminated label value")
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                value.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                i += 2
                continue
            if c == '"':
                i += 1
                break
            value.append(c)
            i += 1
        if name in labels:
            raise ValueError(f"label {name!r} twice")
        labels[name] = "".join(value)
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        raise ValueError(f"expected , or }} at column {i}")


def _float(s: str) -> float:
    if s in ("+Inf", "Inf", "inf", "+inf"):
        return math.inf
    if s in ("-Inf", "-inf"):
        return -math.inf
    return float(s)


def parse_exposition(text: str) -> Exposition:
    """Parses the Prometheus text format or OpenMetrics (with exemplars)."""
    types, helps, units, samples, errors = {}, {}, {}, [], []
    eof = False
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    for n, line in enumerate(lines, 1):
        if eof:
            errors.append((n, line, "content after # EOF"))
            continue
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if line.strip() == "# EOF":
                eof = True
            elif len(parts) >= 3 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip() if len(parts) > 3 else ""
            elif len(parts) >= 3 and parts[1] == "HELP":
                helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif len(parts) >= 3 and parts[1] == "UNIT":
                units[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        try:
            m = _NAME_RE.match(line)
            if not m:
                raise ValueError("no metric name")
            name, i = m.group(0), m.end()
            labels = {}
            if i < len(line) and line[i] == "{":
                labels, i = _parse_labels(line, i)
            rest = line[i:]
            exemplar = None
            if " # " in rest:
                rest, _, ex = rest.partition(" # ")
                ex = ex.strip()
                if not ex.startswith("{"):
                    raise ValueError("exemplar without {labels}")
                ex_labels, j = _parse_labels(ex, 0)
                ex_parts = ex[j:].split()
                if not 1 <= len(ex_parts) <= 2:
                    raise ValueError(f"exemplar needs a value and an optional timestamp: {ex!r}")
                exemplar = {"labels": ex_labels, "value": _float(ex_parts[0]),
                            "timestamp": _float(ex_parts[1]) if len(ex_parts) > 1 else None}
            parts = rest.split()
            if not 1 <= len(parts) <= 2:
                raise ValueError(f"expected a value and an optional timestamp, got {rest!r}")
            samples.append(Sample(name, labels, _float(parts[0]),
                                  _float(parts[1]) if len(parts) > 1 else None, exemplar, line))
        except (ValueError, IndexError) as e:
            errors.append((n, line, str(e)))
    return Exposition(types, helps, units, samples, eof, errors)


# --------------------------------------------------------------------------
# docs/specs/instrumentation.md


@dataclass
class SpecMetric:
    name: str
    type: str
    unit: str
    labels: list
    # Exposed only with a registry on object storage (the spec says "No
    # sample/series with a registry on local disk"); tests/registry checks
    # those.
    remote_only: bool = False


def _table_rows(section: str):
    for line in section.splitlines():
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        yield [c.strip() for c in line.strip("|").split("|")]


def _section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"{SPEC} has no '## {heading}' section"
    return m.group(1)


def spec_metrics() -> dict:
    """{name: SpecMetric} from the table under '## Metrics'."""
    text = SPEC.read_text()
    out = {}
    for cells in _table_rows(_section(text, "Metrics")):
        if cells[0] == "name" or len(cells) < 5:
            continue
        name = cells[0].strip("`")
        labels = re.findall(r"`([^`]+)`", cells[3])
        out[name] = SpecMetric(name, cells[1], cells[2], labels,
                               "with a registry on local disk" in cells[4])
    assert out, f"found no metrics table in {SPEC}"
    return out


def spec_spans() -> dict:
    """{span name: {"kind":..., "parent":..., "attributes": [...]}} from the
    table under '## Traces' (the server span is keyed 'SERVER')."""
    text = SPEC.read_text()
    out = {}
    for cells in _table_rows(_section(text, "Traces")):
        if cells[0] == "span" or len(cells) < 4:
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        key = "SERVER" if names and names[0] == "{method} {route}" else names[0]
        out[key] = {"kind": cells[1], "parent": cells[2],
                    "attributes": re.findall(r"`([a-z_.]+)`", cells[3])}
    return out


def exposition_names_for(metric: SpecMetric) -> set:
    """The sample names a spec metric appears as in the text format."""
    if metric.type == "histogram":
        return {metric.name + s for s in ("_bucket", "_sum", "_count")}
    return {metric.name}


# --------------------------------------------------------------------------
# OTLP receivers

# Receivers and Prometheus instances still open, for failure reports.
LIVE_RECEIVERS: list = []
LIVE_PROMETHEUS: list = []

SPAN_KIND = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


@dataclass
class RSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict
    start_ns: int
    end_ns: int
    status_code: int
    resource: dict
    scope: str
    trace_state: str

    def short(self) -> str:
        return (f"{self.name!r} kind={self.kind} trace={self.trace_id} span={self.span_id} "
                f"parent={self.parent_span_id or '-'} attrs={self.attributes}")


class SpanSink:
    """Spans received by a receiver, thread-safe, plus what each export
    looked like (for failure messages)."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.lock = threading.Lock()
        self.spans: list[RSpan] = []
        self.exports: list[dict] = []  # {"path", "headers"/"metadata", "spans"}
        self.rejected: list[str] = []

    def add_request(self, req, meta: dict):
        spans = []
        for rs in req.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    spans.append(RSpan(
                        trace_id=sp.trace_id.hex(), span_id=sp.span_id.hex(),
                        parent_span_id=sp.parent_span_id.hex(), name=sp.name,
                        kind=SPAN_KIND.get(sp.kind, str(sp.kind)),
                        attributes={kv.key: any_value(kv.value) for kv in sp.attributes},
                        start_ns=sp.start_time_unix_nano, end_ns=sp.end_time_unix_nano,
                        status_code=sp.status.code, resource=resource, scope=ss.scope.name,
                        trace_state=sp.trace_state))
        with self.lock:
            self.spans.extend(spans)
            self.exports.append({**meta, "spans": len(spans)})

    def snapshot(self) -> list[RSpan]:
        with self.lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[RSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def describe(self, limit: int = 40) -> str:
        with self.lock:
            spans, exports, rejected = list(self.spans), list(self.exports), list(self.rejected)
        lines = [f"{self.protocol} receiver: {len(exports)} export(s), {len(spans)} span(s), "
                 f"rejected requests: {rejected or 'none'}"]
        lines += [f"  export: {e}" for e in exports[:10]]
        lines += ["  " + s.short() for s in spans[:limit]]
        if len(spans) > limit:
            lines.append(f"  ... {len(spans) - limit} more")
        return "\n".join(lines)


class GrpcTraceReceiver:
    """opentelemetry.proto.collector.trace.v1.TraceService on 127.0.0.1."""

    protocol = "grpc"

    def __init__(self):
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc

        self.sink = SpanSink("grpc")
        sink = self.sink

        class Servicer(pb_grpc.TraceServiceServicer):
            def Export(self, request, context):
                sink.add_request(request, {"rpc": "TraceService/Export",
                                           "metadata": dict(context.invocation_metadata())})
                return pb.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        assert self.port, "could not bind the gRPC receiver on 127.0.0.1"
        self.server.start()
        LIVE_RECEIVERS.append(self)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        if self in LIVE_RECEIVERS:
            LIVE_RECEIVERS.remove(self)
        self.server.stop(grace=0).wait(5)


class HttpTraceReceiver:
    """POST /v1/traces with an ExportTraceServiceRequest body (protobuf),
    answered 200 with an empty ExportTraceServiceResponse; on 127.0.0.1."""

    protocol = "http/protobuf"

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

        self.sink = SpanSink("http/protobuf")
        sink = self.sink

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _answer(self, status, body=b"", ctype="application/x-protobuf"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self._body()
                meta = {"path": self.path, "content-type": self.headers.get("Content-Type"),
                        "content-encoding": self.headers.get("Content-Encoding")}
                if self.path != "/v1/traces":
                    sink.rejected.append(f"POST {self.path} (not /v1/traces)")
                    return self._answer(404, b"not found", "text/plain")
                enc = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if enc == "gzip":
                        body = gzip.decompress(body)
                    elif enc == "deflate":
                        body = zlib.decompress(body)
                    req = pb.ExportTraceServiceRequest()
                    req.ParseFromString(body)
                except Exception as e:  # noqa: BLE001 - report, answer 400
                    sink.rejected.append(f"POST {self.path} {meta}: undecodable body: {e!r}")
                    return self._answer(400, b"bad request", "text/plain")
                sink.add_request(req, meta)
                self._answer(200, pb.ExportTraceServiceResponse().SerializeToString())

            def do_GET(self):
                sink.rejected.append(f"GET {self.path}")
                self._answer(404, b"not found", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()
        LIVE_RECEIVERS.append(self)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        if self in LIVE_RECEIVERS:
            LIVE_RECEIVERS.remove(self)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def otlp_args(receiver, *extra) -> list:
    return ["--otlp-endpoint", receiver.endpoint, "--otlp-protocol", receiver.protocol, *extra]


# --------------------------------------------------------------------------
# Prometheus


class Prometheus:
    """A real Prometheus on a free loopback port scraping `targets` every
    second, its TSDB in `workdir`."""

    def __init__(self, workdir: Path, targets: list[str], ready_timeout: float = 30.0):
        if shutil.which("prometheus") is None:
            raise RuntimeError("no `prometheus` on PATH: run scripts/setup-prometheus.sh")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: sluice\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.log_path = workdir / "prometheus.log"
        # The free port can be taken between probing and binding: retry.
        for attempt in range(3):
            self.port = free_port()
            self.args = ["prometheus", f"--config.file={self.config}",
                         f"--storage.tsdb.path={workdir / f'tsdb-{attempt}'}",
                         f"--web.listen-address=127.0.0.1:{self.port}",
                         "--enable-feature=exemplar-storage",
                         "--storage.tsdb.retention.time=1h", "--log.level=warn"]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=workdir, env=child_env())
            if self._wait_ready(ready_timeout):
                LIVE_PROMETHEUS.append(self)
                return
            if "address already in use" not in self.log_tail().lower():
                break
        self.stop()
        raise RuntimeError(f"prometheus was not ready (/-/ready) within {ready_timeout}s "
                           f"(exit code {self.proc.poll()}):\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _, _ = h.http_request(self.port, "GET", "/-/ready", timeout=2.0)
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def api(self, path: str, **params):
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        status, _, body = h.http_request(self.port, "GET", url, timeout=10.0)
        try:
            doc = json.loads(body)
        except ValueError:
            raise AssertionError(f"Prometheus {url} answered {status}: {body[:500]!r}")
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"Prometheus {url} answered {status}: {doc}")
        return doc["data"]

    def query(self, promql: str) -> list:
        """An instant query: [(labels, float value)]."""
        data = self.api("/api/v1/query", query=promql)
        if data["resultType"] == "scalar":
            return [({}, _float(data["result"][1]))]
        assert data["resultType"] == "vector", data
        return [(r["metric"], _float(r["value"][1])) for r in data["result"]]

    def targets(self) -> list:
        return self.api("/api/v1/targets")["activeTargets"]

    def stop(self):
        if self in LIVE_PROMETHEUS:
            LIVE_PROMETHEUS.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# --------------------------------------------------------------------------
# JSON logs


def json_log_lines(text: str):
    """(records, bad lines): each non-empty stderr line parsed as JSON."""
    records, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            bad.append((n, line))
            continue
        if not isinstance(doc, dict):
            bad.append((n, line))
            continue
        records.append(doc)
    return records, bad


def log_fields(rec: dict) -> dict:
    """A log record's fields, whether tracing-subscriber nests them under
    "fields" (its default) or flattens them into the object."""
    out = {k: v for k, v in rec.items() if k != "fields"}
    if isinstance(rec.get("fields"), dict):
        out.update(rec["fields"])
    return out
