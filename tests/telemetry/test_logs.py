"""JSON logs (--log-format json): one `sluice::request` line per HTTP request
with the spec's fields, correlated with the trace, and the model lifecycle
lines with model/version fields.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

import telhelpers as t
from telhelpers import h

REQUEST_FIELDS = ("request_id", "trace_id", "span_id", "method", "route", "status", "duration_ms")


@dataclass
class LogRun:
    server: t.TServer
    trace_id: str
    parent_id: str
    ok_rid: str
    ok_headers: dict
    ok_version: str
    nf_rid: str
    records: list
    bad: list


@pytest.fixture(scope="module")
def logrun(tmp_path_factory, telemetry_flags):
    receiver = t.GrpcTraceReceiver()  # tracing on: every request has a server span
    root = tmp_path_factory.mktemp("logs")
    models = h.copy_models(root / "models", only={"scale": ["1", "2"]}, demo=False)
    server = t.start_sluice(models, root / "logs", extra_args=["--log-format", "json", *t.otlp_args(receiver)])
    try:
        trace_id, parent_id = t.new_trace_id(), t.new_span_id()
        ok_rid, nf_rid = f"tel-log-{t.new_span_id()}", f"tel-log-nf-{t.new_span_id()}"
        status, ok_headers, body = t.post_infer(server.port, headers={
            "x-request-id": ok_rid, "traceparent": t.traceparent(trace_id, parent_id)})
        assert status == 200, body[:300]
        ok_version = str(json.loads(body)["model_version"])
        status, _, body = t.post_infer(server.port, model="no_such_model", headers={"x-request-id": nf_rid})
        assert status == 404, body[:300]

        def logged():
            text = server.stderr_text()
            return ok_rid in text and nf_rid in text

        t.wait_until(logged, timeout=5.0)
        time.sleep(0.2)  # let a line being written finish
        records, bad = t.json_log_lines(server.stderr_text())
        yield LogRun(server, trace_id, parent_id, ok_rid, ok_headers, ok_version, nf_rid, records, bad)
    finally:
        code = server.stop()
        receiver.close()
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{server.stderr_tail()}"


def _request_lines(run, rid):
    return [t.log_fields(r) for r in run.records
            if r.get("target") == "sluice::request" and t.log_fields(r).get("request_id") == rid]


def test_every_stderr_line_is_json(logrun):
    assert not logrun.bad, f"non-JSON lines on stderr with --log-format json: {logrun.bad[:5]}"


def test_one_request_line_with_the_trace(logrun):
    lines = _request_lines(logrun, logrun.ok_rid)
    assert len(lines) == 1, (f"{len(lines)} lines with target sluice::request and request_id "
                             f"{logrun.ok_rid!r}, want exactly 1: {lines}")
    f = lines[0]
    missing = [k for k in REQUEST_FIELDS + ("outcome", "model", "version") if k not in f]
    assert not missing, f"request line lacks fields {missing}: {f}"
    tp = t.parse_traceparent(logrun.ok_headers.get("traceparent"))
    problems = []
    if f["trace_id"] != logrun.trace_id:
        problems.append(f"trace_id {f['trace_id']!r}, the traceparent's is {logrun.trace_id}")
    if not (isinstance(f["span_id"], str) and t.HEX16.match(f["span_id"])):
        problems.append(f"span_id {f['span_id']!r} is not 16 hex digits")
    elif f["span_id"] == logrun.parent_id:
        problems.append("span_id is the client's parent span id, not the server span's")
    elif tp and f["span_id"] != tp[1]:
        problems.append(f"span_id {f['span_id']} is not the server span's ({tp[1]}, from the response traceparent)")
    if f.get("level", "").upper() != "INFO":
        problems.append(f"level {f.get('level')!r}, spec: INFO")
    if f["model"] != "scale":
        problems.append(f"model {f['model']!r}")
    if str(f["version"]) != logrun.ok_version:
        problems.append(f"version {f['version']!r}, version {logrun.ok_version} answered")
    if str(f["status"]) != "200":
        problems.append(f"status {f['status']!r}")
    if f["method"] != "POST" or f["route"] != "/v2/models/{model}/infer":
        problems.append(f"method/route {f['method']!r} {f['route']!r}")
    if f["outcome"] != "success":
        problems.append(f"outcome {f['outcome']!r}")
    d = f["duration_ms"]
    if not (isinstance(d, float) and 0 < d < 30_000):
        problems.append(f"duration_ms {d!r} is not a fractional number of milliseconds in (0, 30000)")
    if "error" in f:
        problems.append(f"error {f['error']!r} on a success")
    assert not problems, "request line: " + "; ".join(problems) + f"\n{f}"


def test_failed_request_line(logrun):
    lines = _request_lines(logrun, logrun.nf_rid)
    assert len(lines) == 1, f"{len(lines)} sluice::request lines for the 404's request_id: {lines}"
    f = lines[0]
    problems = []
    if str(f.get("status")) != "404":
        problems.append(f"status {f.get('status')!r}")
    if f.get("outcome") != "not_found":
        problems.append(f"outcome {f.get('outcome')!r}, want not_found")
    if not (isinstance(f.get("error"), str) and f["error"]):
        problems.append(f"error {f.get('error')!r}: the spec has the error message on failed requests")
    if f.get("level", "").upper() != "INFO":
        problems.append(f"level {f.get('level')!r} on a 404 (WARN is for 5xx)")
    assert not problems, "404 request line: " + "; ".join(problems) + f"\n{f}"


def test_request_lines_have_the_common_fields(logrun):
    lines = [t.log_fields(r) for r in logrun.records if r.get("target") == "sluice::request"]
    assert lines, "no sluice::request lines at all"
    bad = [(sorted(set(REQUEST_FIELDS) - set(f)), f) for f in lines if set(REQUEST_FIELDS) - set(f)]
    assert not bad, (f"{len(bad)} of {len(lines)} sluice::request lines lack fields (missing, line): "
                     f"{bad[:3]}")
    levels = [(f.get("level"), f.get("status"), f.get("route")) for f in lines
              if str(f.get("level", "")).upper() != ("WARN" if int(f.get("status", 0)) >= 500 else "INFO")]
    assert not levels, f"sluice::request levels (spec: INFO, WARN for 5xx) wrong for (level, status, route): {levels}"


@pytest.mark.parametrize("message", ["loading version", "version ready"])
def test_lifecycle_lines(logrun, message):
    lines = [t.log_fields(r) for r in logrun.records if r.get("target") == "sluice_serving::manager"
             and t.log_fields(r).get("message") == message]
    got = sorted((f.get("model"), str(f.get("version"))) for f in lines)
    assert got == [("scale", "1"), ("scale", "2")], (
        f"{message!r} lines of target sluice_serving::manager (model, version): {got}, want one per "
        f"version of scale: {lines}")
    for f in lines:
        assert f.get("level", "").upper() == "INFO", f
        if message == "version ready":
            assert "verified" in f and "elapsed_ms" in f, f"'version ready' without verified/elapsed_ms: {f}"


def _wait_for_line(server, pred, what, timeout=10.0):
    found = {}

    def look():
        records, _ = t.json_log_lines(server.stderr_text())
        hits = [t.log_fields(r) for r in records if pred(t.log_fields(r))]
        found["hits"] = hits
        return hits

    hits = t.wait_until(look, timeout=timeout, interval=0.1)
    assert hits, f"no log line {what} within {timeout}s\n{server.stderr_tail(30)}"
    return hits


def _lifecycle(message, model, version=None):
    def pred(f):
        return (f.get("target") == "sluice_serving::manager" and f.get("message") == message
                and f.get("model") == model and (version is None or str(f.get("version")) == str(version)))
    return pred


def test_lifecycle_lines_as_the_repository_changes(make_sluice):
    """Every lifecycle message of the spec, each with a model field and, when
    it concerns one version, a version field, at the spec's level; the load
    metrics follow."""
    import shutil

    server = make_sluice(only={"scale": ["1", "2"], "identity_fp32": ["1"]}, extra_args=["--log-format", "json"])
    models = server.models_dir
    problems = []

    def check(hits, level, extra=(), per_version=True):
        for f in hits:
            if f.get("level", "").upper() != level:
                problems.append(f"{f.get('message')!r}: level {f.get('level')!r}, spec: {level}: {f}")
            required = ("model", "version") if per_version else ("model",)
            missing = [k for k in (*required, *extra) if k not in f]
            if missing:
                problems.append(f"{f.get('message')!r}: lacks fields {missing} (spec: each lifecycle line has "
                                f"model, and version when it concerns one version): {f}")

    # A version ONNX Runtime refuses: 'loading version', then 'version not loaded' (ERROR, reason).
    h.stage_version(models, "scale", h.CORRUPT_ONNX, 7)
    check(_wait_for_line(server, _lifecycle("loading version", "scale", 7), "'loading version' scale 7"), "INFO")
    check(_wait_for_line(server, _lifecycle("version not loaded", "scale", 7), "'version not loaded' scale 7"),
          "ERROR", ("reason",))
    # A version removed: 'version retired; draining in-flight requests', then 'version unloaded'.
    shutil.rmtree(models / "scale" / "1")
    check(_wait_for_line(server, _lifecycle("version retired; draining in-flight requests", "scale", 1),
                         "'version retired; draining in-flight requests' scale 1"), "INFO")
    check(_wait_for_line(server, _lifecycle("version unloaded", "scale", 1), "'version unloaded' scale 1"), "INFO")
    # A broken model.toml: 'invalid model.toml; keeping what serves' (ERROR, error).
    (models / "scale" / "model.toml").write_text("this is = = not toml\n")
    check(_wait_for_line(server, _lifecycle("invalid model.toml; keeping what serves", "scale"),
                         "'invalid model.toml; keeping what serves' scale"), "ERROR", ("error",),
          per_version=False)
    # A model removed: 'model removed from the repository'.
    shutil.rmtree(models / "identity_fp32")
    check(_wait_for_line(server, _lifecycle("model removed from the repository", "identity_fp32"),
                         "'model removed from the repository' identity_fp32"), "INFO", per_version=False)

    status, _, text = server.metrics(port=server.port)
    assert status == 200, status
    exp = t.parse_exposition(text)
    failures = exp.value("sluice_model_loads_total", model="scale", outcome="failure")
    successes = exp.value("sluice_model_loads_total", model="scale", outcome="success")
    loads = exp.value("sluice_model_load_duration_seconds_count", model="scale")
    loaded = exp.value("sluice_model_versions_loaded", model="scale")
    if failures < 1:
        problems.append(f"sluice_model_loads_total{{model=\"scale\",outcome=\"failure\"}} = {failures} after a "
                        "corrupt version 7")
    if successes != 2:
        problems.append(f"sluice_model_loads_total{{model=\"scale\",outcome=\"success\"}} = {successes}, want 2")
    if loads != successes + failures:
        problems.append(f"sluice_model_load_duration_seconds_count{{model=\"scale\"}} = {loads}, want every load "
                        f"(spec: whether it succeeded or not) = {successes + failures}")
    if loaded != 1:
        problems.append(f"sluice_model_versions_loaded{{model=\"scale\"}} = {loaded}, want 1 (version 2 alone)")
    if exp.value("sluice_model_versions_loaded", model="identity_fp32") != 0:
        problems.append("sluice_model_versions_loaded{model=\"identity_fp32\"} > 0 after the model was removed")
    assert not problems, "lifecycle:\n  " + "\n  ".join(problems)
