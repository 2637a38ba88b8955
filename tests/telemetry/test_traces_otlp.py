"""Traces through real OTLP receivers on loopback, one per protocol: a gRPC
TraceService and an HTTP/protobuf POST /v1/traces endpoint, both decoding
the official opentelemetry-proto messages. Checks the span tree of an
inference against the spec's table, W3C trace-context propagation both ways,
parent-based sampling, and that SIGTERM flushes pending spans.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

import telhelpers as t
from telhelpers import h

SPAN_WAIT_S = 15.0
SERVER_SPAN = "POST /v2/models/{model}/infer"
CHILDREN_OF_SERVER = ("sluice.decode", "sluice.queue", "sluice.inference", "sluice.encode")
CHILDREN_OF_INFERENCE = ("sluice.compute_input", "sluice.compute_infer", "sluice.compute_output")
ALL_NAMES = (SERVER_SPAN,) + CHILDREN_OF_SERVER + CHILDREN_OF_INFERENCE
PROTOCOLS = ["grpc", "http/protobuf"]


def make_receiver(protocol):
    return t.GrpcTraceReceiver() if protocol == "grpc" else t.HttpTraceReceiver()


@dataclass
class Sent:
    trace_id: str | None
    parent_id: str | None
    request_id: str
    status: int
    headers: dict
    body: bytes
    request_body: bytes = b""

    @property
    def response_tp(self):
        return t.parse_traceparent(self.headers.get("traceparent"))


TRACESTATE = "sluicetest=t61rcWkgMzE,vendor2=opaque"


def send(server, model="scale", sampled: bool | None = True, method="POST", path=None, request_id=None,
         tracestate=None):
    """One request; `sampled` None sends no traceparent."""
    trace_id = parent_id = None
    rid = request_id or f"tel-{t.new_span_id()}"
    headers = {"x-request-id": rid}
    if sampled is not None:
        trace_id, parent_id = t.new_trace_id(), t.new_span_id()
        headers["traceparent"] = t.traceparent(trace_id, parent_id, sampled)
    if tracestate:
        headers["tracestate"] = tracestate
    if method == "POST":
        body = t.scale_body()
        status, rh, data = t.post_infer(server.port, model=model, body=body, headers=headers)
    else:
        body = b""
        status, rh, data = server.request(method, path, headers=headers)
    return Sent(trace_id, parent_id, rid, status, rh, data, body)


def complete_trace(sink, trace_id, names=ALL_NAMES):
    spans = sink.trace(trace_id)
    have = {s.name for s in spans}
    return spans if all(n in have for n in names) else None


@dataclass
class Scenario:
    protocol: str
    receiver: object
    server: t.TServer
    sent: dict = field(default_factory=dict)

    def spans_of(self, key):
        return self.receiver.sink.trace(self.sent[key].trace_id)


@pytest.fixture(scope="module", params=PROTOCOLS)
def scenario(request, tmp_path_factory, telemetry_flags):
    protocol = request.param
    receiver = make_receiver(protocol)
    root = tmp_path_factory.mktemp("traces-" + protocol.replace("/", "-"))
    models = h.copy_models(root / "models", only={"scale": ["1", "2"]}, demo=False)
    server = t.start_sluice(models, root / "logs", extra_args=t.otlp_args(receiver))
    sc = Scenario(protocol, receiver, server)
    try:
        sc.sent["traced"] = send(server, sampled=True, tracestate=TRACESTATE)
        sc.sent["root"] = send(server, sampled=None)
        sc.sent["unsampled"] = send(server, sampled=False)
        sc.sent["not_found"] = send(server, model="no_such_model", sampled=True)
        sc.sent["unmatched"] = send(server, method="GET", path="/no/such/route", sampled=True)
        for key, want in (("traced", 200), ("root", 200), ("unsampled", 200), ("not_found", 404),
                          ("unmatched", 404)):
            assert sc.sent[key].status == want, (key, sc.sent[key].status, sc.sent[key].body[:300])
        root_tp = sc.sent["root"].response_tp
        sink = receiver.sink

        def arrived():
            ok = complete_trace(sink, sc.sent["traced"].trace_id)
            ok = ok and sink.trace(sc.sent["not_found"].trace_id) and sink.trace(sc.sent["unmatched"].trace_id)
            return ok and (root_tp is None or sink.trace(root_tp[0]))

        # Batched export while the server runs (no shutdown needed).
        t.wait_until(arrived, timeout=SPAN_WAIT_S, interval=0.2)
        yield sc
    finally:
        code = server.stop()
        receiver.close()
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{server.stderr_tail()}"


def _trace_or_fail(sc, key, names=ALL_NAMES):
    sent = sc.sent[key]
    spans = sc.receiver.sink.trace(sent.trace_id)
    have = sorted(s.name for s in spans)
    missing = [n for n in names if n not in have]
    assert not missing, (
        f"[{sc.protocol}] within {SPAN_WAIT_S}s of a {sent.status} request with traceparent trace id "
        f"{sent.trace_id}, the receiver got spans {have} for that trace; missing {missing}\n"
        f"{sc.receiver.sink.describe()}")
    return spans


def _one(spans, name, protocol):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"[{protocol}] {len(found)} spans named {name!r} in the trace: " + \
        "; ".join(s.short() for s in spans)
    return found[0]


def _answered_version(sent) -> str:
    return str(json.loads(sent.body)["model_version"])


def test_server_span(scenario):
    sc, sent = scenario, scenario.sent["traced"]
    spans = _trace_or_fail(sc, "traced")
    server = _one(spans, SERVER_SPAN, sc.protocol)
    p = f"[{sc.protocol}] server span:"
    span = f"\n  the span: {server.short()}"
    assert server.kind == "SERVER", f"{p} kind {server.kind}, spec: server{span}"
    assert server.trace_id == sent.trace_id, f"{p} trace id, want {sent.trace_id}{span}"
    assert server.parent_span_id == sent.parent_id, (
        f"{p} parent span id {server.parent_span_id!r}, want the traceparent's {sent.parent_id}{span}")
    a = server.attributes
    want = {
        "http.request.method": "POST",
        "http.route": "/v2/models/{model}/infer",
        "url.path": "/v2/models/scale/infer",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
        "sluice.request_id": sent.request_id,
        "sluice.model": "scale",
    }
    wrong = {k: (a.get(k, "<absent>"), v) for k, v in want.items() if a.get(k, "<absent>") != v}
    assert not wrong, (f"{p} attributes (got, want): {wrong} (http.response.status_code is an int "
                       f"attribute in the OpenTelemetry HTTP semantic conventions){span}")
    version = _answered_version(sent)
    assert str(a.get("sluice.model_version")) == version, (
        f"{p} sluice.model_version {a.get('sluice.model_version')!r}, version {version} answered{span}")
    assert "error.type" not in a, f"{p} error.type on a 200{span}"
    assert server.resource.get("service.name") == "sluice", (
        f"{p} resource service.name {server.resource.get('service.name')!r}, spec: \"sluice\" "
        f"(resource: {server.resource}){span}")
    assert 0 < server.start_ns <= server.end_ns, f"{p} start/end {server.start_ns}/{server.end_ns}{span}"
    assert abs(server.start_ns / 1e9 - time.time()) < 300, f"{p} start time is not the wall clock's{span}"


def test_child_spans(scenario):
    sc, sent = scenario, scenario.sent["traced"]
    spans = _trace_or_fail(sc, "traced")
    spec = t.spec_spans()
    server = _one(spans, SERVER_SPAN, sc.protocol)
    inference = _one(spans, "sluice.inference", sc.protocol)
    version = _answered_version(sent)
    problems = []
    for name in CHILDREN_OF_SERVER + CHILDREN_OF_INFERENCE:
        s = _one(spans, name, sc.protocol)
        parent = server if name in CHILDREN_OF_SERVER else inference
        if s.parent_span_id != parent.span_id:
            problems.append(f"{name}: parent {s.parent_span_id!r}, want {parent.name}'s {parent.span_id}")
        if s.kind != "INTERNAL":
            problems.append(f"{name}: kind {s.kind}, spec: internal")
        missing = [k for k in spec[name]["attributes"] if k not in s.attributes]
        if missing:
            problems.append(f"{name}: missing attributes {missing} (has {s.attributes})")
        if s.attributes.get("sluice.model") != "scale":
            problems.append(f"{name}: sluice.model {s.attributes.get('sluice.model')!r}")
        if str(s.attributes.get("sluice.model_version")) != version:
            problems.append(f"{name}: sluice.model_version {s.attributes.get('sluice.model_version')!r}, "
                            f"version {version} answered")
        slack = 2_000_000  # 2 ms, for clocks read separately
        if not (parent.start_ns - slack <= s.start_ns <= s.end_ns <= parent.end_ns + slack):
            problems.append(f"{name}: [{s.start_ns}, {s.end_ns}] is not inside {parent.name}'s "
                            f"[{parent.start_ns}, {parent.end_ns}]")
    if inference.attributes.get("sluice.batch_size") != 1:
        problems.append(f"sluice.inference: sluice.batch_size {inference.attributes.get('sluice.batch_size')!r}, "
                        "want the int 1 (the request's tensor was [1, 4])")
    for name, key in (("sluice.decode", "sluice.request_bytes"), ("sluice.encode", "sluice.response_bytes")):
        v = _one(spans, name, sc.protocol).attributes.get(key)
        if not (isinstance(v, int) and v > 0):
            problems.append(f"{name}: {key} {v!r} is not a positive integer")
    other = [s.short() for s in spans if s.name not in ALL_NAMES]
    if other:
        problems.append(f"spans not in the spec's table: {other}")
    assert not problems, f"[{sc.protocol}] span tree of one inference:\n  " + "\n  ".join(problems)


def test_response_carries_the_server_span_context(scenario):
    sc, sent = scenario, scenario.sent["traced"]
    tp = sent.response_tp
    assert tp, f"[{sc.protocol}] response traceparent header: {sent.headers.get('traceparent')!r}"
    server = _one(_trace_or_fail(sc, "traced"), SERVER_SPAN, sc.protocol)
    assert tp == (sent.trace_id, server.span_id, "01"), (
        f"[{sc.protocol}] response traceparent {sent.headers.get('traceparent')}, want "
        f"00-{sent.trace_id}-{server.span_id}-01 (the server span's context)")


def test_tracestate_is_propagated(scenario):
    """The spec: a W3C traceparent (and tracestate) on the request makes the
    server span its child; the child's span context keeps the tracestate."""
    sc = scenario
    server = _one(_trace_or_fail(sc, "traced"), SERVER_SPAN, sc.protocol)
    assert server.trace_state == TRACESTATE, (
        f"[{sc.protocol}] server span trace_state {server.trace_state!r}, the request's tracestate was "
        f"{TRACESTATE!r}")


def test_request_without_traceparent_starts_a_root_trace(scenario):
    sc, sent = scenario, scenario.sent["root"]
    tp = sent.response_tp
    assert tp, f"[{sc.protocol}] response to a request without traceparent has traceparent " \
               f"{sent.headers.get('traceparent')!r}"
    trace_id, span_id, flags = tp
    assert flags == "01", f"[{sc.protocol}] the root span of a 1.0 sample ratio is not sampled: {tp}"
    assert trace_id not in {s.trace_id for s in sc.sent.values()}, "the new trace reused a sent trace id"
    spans = sc.receiver.sink.trace(trace_id)
    assert spans, (f"[{sc.protocol}] no spans arrived for the new trace {trace_id} of a request without "
                   f"traceparent\n{sc.receiver.sink.describe()}")
    server = _one(spans, SERVER_SPAN, sc.protocol)
    assert server.parent_span_id == "", f"[{sc.protocol}] the root server span has a parent: {server.short()}"
    assert server.span_id == span_id, f"[{sc.protocol}] response traceparent span {span_id}, server span {server.span_id}"


def test_unsampled_traceparent_records_nothing(scenario):
    """Parent-based sampling: a traceparent with flags 00 is not sampled."""
    sc, sent = scenario, scenario.sent["unsampled"]
    _trace_or_fail(sc, "traced")  # the batch that would have carried them has arrived
    spans = sc.receiver.sink.trace(sent.trace_id)
    assert not spans, (f"[{sc.protocol}] spans exported for a traceparent with flags 00: "
                       + "; ".join(s.short() for s in spans))


def test_failed_request_span(scenario):
    sc, sent = scenario, scenario.sent["not_found"]
    spans = sc.receiver.sink.trace(sent.trace_id)
    assert spans, f"[{sc.protocol}] no spans for a traced 404 (unknown model)\n{sc.receiver.sink.describe()}"
    server = _one(spans, SERVER_SPAN, sc.protocol)
    a = server.attributes
    assert a.get("http.response.status_code") == 404, (
        f"[{sc.protocol}] http.response.status_code {a.get('http.response.status_code')!r}, want the int 404: "
        f"{server.short()}")
    assert a.get("error.type") == "not_found", (
        f"[{sc.protocol}] error.type {a.get('error.type')!r} on a 404, spec: the outcome (not_found): {server.short()}")
    assert a.get("http.route") == "/v2/models/{model}/infer", f"[{sc.protocol}] {server.short()}"
    assert server.parent_span_id == sent.parent_id, f"[{sc.protocol}] {server.short()}"


def test_unmatched_route_span_is_named_by_the_method(scenario):
    sc, sent = scenario, scenario.sent["unmatched"]
    spans = sc.receiver.sink.trace(sent.trace_id)
    assert spans, f"[{sc.protocol}] no spans for a traced GET /no/such/route\n{sc.receiver.sink.describe()}"
    servers = [s for s in spans if s.kind == "SERVER"]
    assert len(servers) == 1 and servers[0].name == "GET", (
        f"[{sc.protocol}] server span of an unmatched route: {[s.short() for s in servers]}, spec: named "
        "`{method}` alone (\"GET\")")
    a = servers[0].attributes
    assert a.get("http.response.status_code") == 404, (
        f"[{sc.protocol}] http.response.status_code {a.get('http.response.status_code')!r}, want the int 404: "
        f"{servers[0].short()}")
    assert a.get("http.route", "") == "", f"[{sc.protocol}] http.route {a.get('http.route')!r} on no route"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_flushes_pending_spans(make_sluice, protocol):
    receiver = make_receiver(protocol)
    try:
        server = make_sluice(extra_args=t.otlp_args(receiver))
        sent = send(server, sampled=True)
        assert sent.status == 200, sent.body[:300]
        started = time.monotonic()
        code = server.stop()  # SIGTERM at once: the batch is still pending
        took = time.monotonic() - started
        assert code == 0, f"[{protocol}] sluice exited with {code} on SIGTERM\n{server.stderr_tail()}"
        spans = t.wait_until(lambda: complete_trace(receiver.sink, sent.trace_id), timeout=2.0)
        assert spans, (f"[{protocol}] SIGTERM right after a traced request (exit after {took:.1f}s): the "
                       f"receiver has {sorted(s.name for s in receiver.sink.trace(sent.trace_id))} of its "
                       f"trace, want all of {list(ALL_NAMES)}\n{receiver.sink.describe()}")
    finally:
        receiver.close()


def test_sample_ratio_zero_keeps_parent_based_sampling(make_sluice, grpc_receiver):
    server = make_sluice(extra_args=t.otlp_args(grpc_receiver, "--trace-sample-ratio", "0"))
    root = send(server, sampled=None)
    child = send(server, sampled=True)
    unsampled = send(server, sampled=False)
    for s in (root, child, unsampled):
        assert s.status == 200, s.body[:300]
    code = server.stop()  # flushes whatever is pending
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{server.stderr_tail()}"
    sink = grpc_receiver.sink
    spans = t.wait_until(lambda: complete_trace(sink, child.trace_id), timeout=3.0)
    assert spans, ("--trace-sample-ratio 0 with a sampled traceparent (flags 01): the trace must still be "
                   f"recorded (parent-based); got {sorted(s.name for s in sink.trace(child.trace_id))}\n"
                   f"{sink.describe()}")
    others = [s.short() for s in sink.snapshot() if s.trace_id != child.trace_id]
    assert not others, ("--trace-sample-ratio 0: spans exported for requests without a sampled parent "
                        "(no traceparent, or flags 00):\n  " + "\n  ".join(others[:10]))
    tp = root.response_tp
    assert tp is not None and tp[2] == "00", (
        "--trace-sample-ratio 0, no traceparent: the response should carry the (unsampled) server span's "
        f"context, flags 00; got traceparent {root.headers.get('traceparent')!r}")


@pytest.mark.parametrize("variant", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_otel_environment_variables(make_sluice, variant):
    """The spec: the endpoint from OTEL_EXPORTER_OTLP_ENDPOINT (a base URL:
    /v1/traces is appended for HTTP) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    (the full URL), the protocol from OTEL_EXPORTER_OTLP_PROTOCOL, the
    service name from OTEL_SERVICE_NAME."""
    receiver = t.HttpTraceReceiver()
    try:
        url = receiver.endpoint if variant == "OTEL_EXPORTER_OTLP_ENDPOINT" else receiver.endpoint + "/v1/traces"
        env = {variant: url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "sluice-under-test"}
        server = make_sluice(env=env)
        sent = send(server, sampled=True)
        assert sent.status == 200, sent.body[:300]
        code = server.stop()
        assert code == 0, f"sluice exited with {code} on SIGTERM\n{server.stderr_tail()}"
        spans = t.wait_until(lambda: receiver.sink.trace(sent.trace_id), timeout=3.0)
        assert spans, (f"{env}: no spans of the traced request reached the HTTP receiver at "
                       f"{url}\n{receiver.sink.describe()}\n{server.stderr_tail()}")
        services = {s.resource.get("service.name") for s in spans}
        assert services == {"sluice-under-test"}, (
            f"OTEL_SERVICE_NAME=sluice-under-test, but the spans' resource service.name is {services}")
    finally:
        receiver.close()
