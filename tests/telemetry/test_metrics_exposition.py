"""/metrics scraped directly after known traffic: the Prometheus text format
passes `promtool check metrics`; OpenMetrics is served when asked for, ends
with `# EOF`, parses with a strict OpenMetrics parser, and carries trace_id
exemplars on the request-duration buckets; histogram buckets are the spec's.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time

import pytest

import telhelpers as t

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
# The Accept header Prometheus 2.42 sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

LATENCY_BUCKETS = [8e-6 * 2 ** k for k in range(23)]
BATCH_BUCKETS = [float(2 ** k) for k in range(13)]
DIFF_BUCKETS = [0.0] + [10.0 ** k for k in range(-9, 2)]
LATENCY_RATIO_BUCKETS = [0.01, 0.1, 0.25, 0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0, 25.0, 100.0]


def _text(traffic, accept=None, port=None):
    status, headers, text = traffic.server.metrics(accept=accept, port=port)
    assert status == 200, f"GET /metrics (Accept: {accept}) answered {status}: {text[:500]}"
    return headers, text


def test_text_format_passes_promtool(traffic):
    headers, text = _text(traffic)
    ctype = headers.get("content-type", "")
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, (
        f"GET /metrics without Accept: Content-Type {ctype!r}, spec: the Prometheus text format (0.0.4)")
    if shutil.which("promtool") is None:
        pytest.fail("no `promtool` on PATH: run scripts/setup-prometheus.sh")
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, (
        f"`promtool check metrics` exited {done.returncode} on the text exposition:\n"
        f"{done.stdout}{done.stderr}")
    exp = t.parse_exposition(text)
    assert not exp.errors, f"unparsable lines in the text exposition: {exp.errors[:10]}"
    with_exemplars = [s.line for s in exp.samples if s.exemplar]
    assert not with_exemplars, ("the text format carries exemplars (spec: only OpenMetrics does): "
                                f"{with_exemplars[:3]}")
    assert not exp.eof, "the 0.0.4 text format ends with '# EOF' (that is OpenMetrics')"


def test_metrics_on_the_http_port_too(traffic):
    """The spec: /metrics on the HTTP port, and on --metrics-addr when given."""
    _, on_metrics = _text(traffic)
    _, on_http = _text(traffic, port=traffic.server.port)
    for where, text in (("--metrics-addr", on_metrics), ("the HTTP port", on_http)):
        names = t.parse_exposition(text).names()
        assert "sluice_requests_total" in names, f"/metrics on {where} has no sluice_requests_total"


@pytest.mark.parametrize("accept", [OPENMETRICS_ACCEPT, PROMETHEUS_ACCEPT], ids=["openmetrics", "prometheus-2.42"])
def test_openmetrics_when_asked(traffic, accept):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    headers, text = _text(traffic, accept=accept)
    ctype = headers.get("content-type", "")
    assert ctype.startswith("application/openmetrics-text"), (
        f"GET /metrics with Accept: {accept!r} answered Content-Type {ctype!r}")
    assert "version=1.0.0" in ctype.replace(" ", ""), f"OpenMetrics Content-Type without version=1.0.0: {ctype!r}"
    assert text.rstrip("\n").endswith("\n# EOF") and text.count("# EOF") == 1, (
        f"the OpenMetrics exposition does not end with one '# EOF' line; its tail: {text[-200:]!r}")
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # noqa: BLE001 - the parser's message is the point
        pytest.fail(f"a strict OpenMetrics parser (prometheus_client) refuses the exposition: {e}")
    assert any(f.name == "sluice_requests" and f.type == "counter" for f in families), (
        "no counter family sluice_requests (samples sluice_requests_total) in the OpenMetrics exposition: "
        f"{sorted((f.name, f.type) for f in families)}")


def test_openmetrics_request_duration_buckets_carry_trace_exemplars(traffic):
    _, text = _text(traffic, accept=OPENMETRICS_ACCEPT)
    exp = t.parse_exposition(text)
    assert not exp.errors, f"unparsable lines: {exp.errors[:10]}"
    buckets = exp.find("sluice_request_duration_seconds_bucket", model="scale", outcome="success")
    assert buckets, "no sluice_request_duration_seconds_bucket{model=\"scale\",outcome=\"success\"} lines"
    with_ex = [s for s in buckets if s.exemplar]
    assert with_ex, ("no exemplar on any sluice_request_duration_seconds_bucket line of scale's successes, "
                     f"after {len(traffic.success_trace_ids)} requests with a sampled traceparent; "
                     f"lines: {[s.line for s in buckets][:8]}")
    answered = {v for v in ("1", "2", "3") if traffic.successes(v)}
    versions_with_ex = {s.labels.get("version") for s in with_ex}
    assert versions_with_ex == answered, (
        f"exemplars on the success buckets of versions {sorted(versions_with_ex)}, but versions "
        f"{sorted(answered)} answered traced requests")
    now = time.time()
    for s in with_ex:
        ex = s.exemplar
        assert set(ex["labels"]) == {"trace_id"}, f"exemplar labels {ex['labels']} (spec: trace_id): {s.line}"
        trace_id = ex["labels"]["trace_id"]
        assert t.HEX32.match(trace_id), f"exemplar trace_id is not 32 lower-case hex digits: {s.line}"
        assert trace_id in traffic.success_trace_ids, (
            f"exemplar trace_id {trace_id} is not the trace id of any successful request sent: {s.line}")
        le = float(s.labels["le"]) if s.labels["le"] != "+Inf" else math.inf
        assert 0 < ex["value"] <= le, f"exemplar value {ex['value']} does not fall in its bucket (le={le}): {s.line}"
        if ex["timestamp"] is not None:
            assert now - 600 < ex["timestamp"] < now + 60, f"exemplar timestamp is not seconds since the epoch: {s.line}"


def _histograms():
    return [m for m in t.spec_metrics().values() if m.type == "histogram"]


@pytest.mark.parametrize("metric", _histograms(), ids=lambda m: m.name)
def test_histogram_buckets_are_the_specs(traffic, metric):
    _, text = _text(traffic)
    exp = t.parse_exposition(text)
    buckets = exp.find(metric.name + "_bucket")
    assert buckets, f"no {metric.name}_bucket lines after traffic"
    if metric.name == "sluice_batch_size":
        want, rule = BATCH_BUCKETS, "1, 2, 4, ... 4096"
    elif metric.name in ("sluice_shadow_max_abs_difference", "sluice_shadow_max_relative_difference"):
        want, rule = DIFF_BUCKETS, "0, then 1e-9 ... 10 by decades"
    elif metric.name == "sluice_shadow_latency_ratio":
        want, rule = LATENCY_RATIO_BUCKETS, "0.01 ... 100, fine around 1"
    else:
        assert metric.unit == "seconds", metric
        want, rule = LATENCY_BUCKETS, "8e-6 * 2^k, k = 0..22"
    series = {}
    for s in buckets:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        series.setdefault(key, []).append(s)
    for key, samples in series.items():
        les = [math.inf if s.labels["le"] in ("+Inf", "Inf") else float(s.labels["le"]) for s in samples]
        finite = [x for x in les if math.isfinite(x)]
        assert les[-1] == math.inf, f"{metric.name}{dict(key)}: the last bucket is not le=\"+Inf\": {les}"
        assert len(finite) == len(want) and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(finite, want)), (
            f"{metric.name}{dict(key)}: buckets {finite}, spec: {rule} ({want})")
        counts = [s.value for s in samples]
        assert counts == sorted(counts), f"{metric.name}{dict(key)}: bucket counts not cumulative: {counts}"
        total = exp.value(metric.name + "_count", **dict(key))
        assert counts[-1] == total, f"{metric.name}{dict(key)}: +Inf bucket {counts[-1]} != _count {total}"


def test_per_version_metrics_agree_with_the_traffic(traffic):
    """The per-version histograms count what the requests did: every
    success went through the queue and one execution of batch size 1;
    request counts and duration counts agree; the gauges are 0 when idle."""
    _, text = _text(traffic)
    exp = t.parse_exposition(text)
    problems = []
    for s in exp.find("sluice_requests_total"):
        d = exp.value("sluice_request_duration_seconds_count", **s.labels)
        if d != s.value:
            problems.append(f"sluice_requests_total{s.labels} = {s.value} but the duration histogram counted {d}")
    for v in ("1", "2", "3"):
        ok = traffic.successes(v)
        lab = {"model": "scale", "version": v}
        executions = exp.value("sluice_compute_infer_duration_seconds_count", **lab)
        for name in ("sluice_queue_duration_seconds_count", "sluice_compute_input_duration_seconds_count",
                     "sluice_compute_infer_duration_seconds_count", "sluice_compute_output_duration_seconds_count"):
            got = exp.value(name, **lab)
            if got < ok:
                problems.append(f"{name}{lab} = {got}, but {ok} requests succeeded on that version")
        batches = exp.value("sluice_batch_size_count", **lab)
        if batches != executions:
            problems.append(f"sluice_batch_size_count{lab} = {batches}, executions (compute_infer) = {executions}")
        if exp.value("sluice_batch_size_sum", **lab) != batches:
            problems.append(f"sluice_batch_size_sum{lab} = {exp.value('sluice_batch_size_sum', **lab)}, but every "
                            f"request was [1, 4] ({batches} executions)")
    for name in ("sluice_requests_in_flight", "sluice_queue_depth"):
        busy = [s.line for s in exp.find(name) if s.value != 0]
        if busy:
            problems.append(f"{name} not 0 with no request in flight: {busy}")
    assert not problems, "\n".join(problems)
