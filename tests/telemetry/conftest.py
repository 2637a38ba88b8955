"""Fixtures for the telemetry tests: a session-wide Sluice that has served
known traffic (with tracing on, to an in-test gRPC OTLP receiver), and a real
Prometheus scraping its metrics address.

When a test fails, the report gets the tail of the stderr log of every Sluice
still running, what every open OTLP receiver got, and Prometheus's log and
targets.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field

import pytest

import telhelpers as t
from telhelpers import h


from oiphelpers import pytest_sessionstart  # noqa: E402,F401  (fail fast without the binary)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    h.server_log_sections(report)
    for r in list(t.LIVE_RECEIVERS):
        report.sections.append((f"OTLP {r.protocol} receiver on port {r.port}", r.sink.describe(limit=12)))
    for p in list(t.LIVE_PROMETHEUS):
        try:
            targets = json.dumps(p.targets(), indent=1)[:3000]
        except Exception as e:  # noqa: BLE001 - best effort in a failure report
            targets = repr(e)
        report.sections.append((f"prometheus on port {p.port}", f"{p.log_tail()}\n--- targets ---\n{targets}"))


@pytest.fixture(scope="session", autouse=True)
def telemetry_flags():
    """Fails every test with one clear message while `sluice serve` lacks the
    flags of docs/specs/instrumentation.md (the implementation has not
    landed, or target/debug/sluice is stale)."""
    missing = t.missing_telemetry_flags()
    if missing:
        pytest.fail(f"`{h.SLUICE_BIN} serve --help` lists no {', '.join(missing)}: the telemetry "
                    "implementation (docs/specs/instrumentation.md) is not in this binary; "
                    "run `cargo build -p sluice-cli`", pytrace=False)


@pytest.fixture
def grpc_receiver():
    r = t.GrpcTraceReceiver()
    yield r
    r.close()


@pytest.fixture
def http_receiver():
    r = t.HttpTraceReceiver()
    yield r
    r.close()


@pytest.fixture
def make_sluice(tmp_path):
    """make_sluice(only={"scale": ["1"]}, extra_args=[...], metrics=False, env={...})
    starts a Sluice over a fresh repository in tmp_path (fixture models
    only); every one is stopped at the end of the test."""
    started = []

    def make(only=None, extra_args=(), metrics=False, name="repo", env=None):
        models = h.copy_models(tmp_path / name / "models", only=only or {"scale": ["1", "2"]}, demo=False)
        s = t.start_sluice(models, tmp_path / name / "logs", extra_args=extra_args, metrics=metrics, env=env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


# --------------------------------------------------------------------------
# The session-wide server and its known traffic


@dataclass
class Traffic:
    server: t.TServer
    receiver: t.GrpcTraceReceiver
    explicit: dict                     # version -> successes sent to /versions/{v}/infer
    unversioned: collections.Counter   # version that answered -> successes sent to /infer
    not_found_model: int               # POST /v2/models/no_such_model/infer -> 404
    not_found_version: int             # POST /v2/models/scale/versions/9/infer -> 404
    validation: int                    # scale v1 with shape [1, 5] -> 400
    unmatched: int                     # GET /no/such/route -> 404
    trace_ids: set = field(default_factory=set)
    success_trace_ids: set = field(default_factory=set)
    ended: float = 0.0                 # time.time() after the last response

    def successes(self, version: str) -> int:
        return self.explicit.get(version, 0) + self.unversioned.get(version, 0)

    def describe(self) -> str:
        return (f"sent: explicit successes {self.explicit}, unversioned successes "
                f"{dict(self.unversioned)}, not_found (unknown model) {self.not_found_model}, "
                f"not_found (scale version 9) {self.not_found_version}, validation {self.validation}, "
                f"unmatched route {self.unmatched}")


N_V1, N_V2, N_UNVERSIONED = 6, 4, 3
N_NOT_FOUND_MODEL, N_NOT_FOUND_VERSION, N_VALIDATION, N_UNMATCHED = 3, 1, 2, 1


def _traced_headers(traffic: Traffic, request_id: str) -> tuple[dict, str]:
    trace_id = t.new_trace_id()
    traffic.trace_ids.add(trace_id)
    return {"traceparent": t.traceparent(trace_id, t.new_span_id()), "x-request-id": request_id}, trace_id


@pytest.fixture(scope="session")
def traffic(tmp_path_factory, telemetry_flags):
    import numpy as np
    import tritonclient.http as httpclient

    root = tmp_path_factory.mktemp("telemetry-session")
    receiver = t.GrpcTraceReceiver()
    models = h.copy_models(root / "models", only={"scale": ["1", "2", "3"]}, demo=False)
    admin_key = "telemetry-admin-key-0123456789"
    server = t.start_sluice(models, root / "logs", metrics=True, extra_args=t.otlp_args(receiver),
                            env={"SLUICE_ADMIN_KEYS": f"telemetry:{admin_key}"})
    tr = Traffic(server, receiver, {}, collections.Counter(), N_NOT_FOUND_MODEL,
                 N_NOT_FOUND_VERSION, N_VALIDATION, N_UNMATCHED)
    x = np.array(t.SCALE_X, dtype=np.float32)
    client = server.client()
    try:
        # Successes through a real third-party client, to explicit versions.
        for version, n in (("1", N_V1), ("2", N_V2)):
            for i in range(n):
                headers, trace_id = _traced_headers(tr, f"tel-v{version}-{i}")
                inp = httpclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                res = client.infer("scale", [inp], model_version=version, headers=headers)
                got = res.get_response().get("model_version")
                assert got == version, f"scale version {version} answered as version {got!r}"
                assert np.array_equal(res.as_numpy("y"), x * int(version)), res.as_numpy("y")
                tr.explicit[version] = tr.explicit.get(version, 0) + 1
                tr.success_trace_ids.add(trace_id)
        # From here on version 2 shadows every request on the unversioned
        # route (version 3 answers them): the shadow metrics and the traffic
        # weights. Shadow copies are not requests: they count nowhere else.
        status, _, body = server.request(
            "PUT", "/admin/models/scale/policy",
            json.dumps({"shadows": [{"version": 2, "percent": 100.0}]}).encode(),
            {"content-type": "application/json", "authorization": f"Bearer {admin_key}"})
        assert status == 200, (status, body[:300])
        # Successes on the unversioned route; the version that answers is counted.
        for i in range(N_UNVERSIONED):
            headers, trace_id = _traced_headers(tr, f"tel-latest-{i}")
            status, _, body = t.post_infer(server.port, headers=headers)
            assert status == 200, (status, body[:300])
            tr.unversioned[str(json.loads(body)["model_version"])] += 1
            tr.success_trace_ids.add(trace_id)
        # Failures.
        for i in range(N_NOT_FOUND_MODEL):
            headers, _ = _traced_headers(tr, f"tel-nf-{i}")
            status, _, body = t.post_infer(server.port, model="no_such_model", headers=headers)
            assert status == 404, (status, body[:300])
        for i in range(N_NOT_FOUND_VERSION):
            headers, _ = _traced_headers(tr, f"tel-nfv-{i}")
            status, _, body = t.post_infer(server.port, version=9, headers=headers)
            assert status == 404, (status, body[:300])
        for i in range(N_VALIDATION):
            headers, _ = _traced_headers(tr, f"tel-bad-{i}")
            status, _, body = t.post_infer(server.port, version=1, body=t.scale_body(cols=5), headers=headers)
            assert status == 400, (status, body[:300])
        for i in range(N_UNMATCHED):
            headers, _ = _traced_headers(tr, f"tel-unmatched-{i}")
            status, _, body = server.request("GET", "/no/such/route", headers=headers)
            assert status == 404, (status, body[:300])
    finally:
        client.close()
    tr.ended = time.time()
    yield tr
    code = server.stop()
    receiver.close()
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{server.stderr_tail()}"


@pytest.fixture(scope="session")
def prometheus(traffic, tmp_path_factory):
    """A real Prometheus scraping the session server's metrics address every
    second, after it has scraped at least once after the traffic ended."""
    prom = t.Prometheus(tmp_path_factory.mktemp("prometheus"), [traffic.server.metrics_hostport])
    try:
        # A scrape that started after the last response (plus a margin for
        # counters updated right after the response is written).
        after = traffic.ended + 0.5

        def scraped_after():
            res = prom.query('timestamp(up{job="sluice"})')
            return bool(res) and res[0][1] > after

        if not t.wait_until(scraped_after, timeout=20.0, interval=0.2):
            pytest.fail(f"Prometheus did not scrape {traffic.server.metrics_hostport} within 20 s "
                        f"after the traffic; targets: {json.dumps(prom.targets(), indent=1)[:3000]}")
        up = prom.query('up{job="sluice"}')
        if not up or up[0][1] != 1:
            targets = prom.targets()
            errors = [(x.get("scrapeUrl"), x.get("health"), x.get("lastError")) for x in targets]
            pytest.fail(f"Prometheus could not scrape Sluice (up={up}): {errors}")
        yield prom
    finally:
        prom.stop()


def pytest_terminal_summary(terminalreporter):
    if h.SUMMARY:
        terminalreporter.section("telemetry")
        for line in h.SUMMARY:
            terminalreporter.write_line(line)
