"""A real Prometheus scrapes Sluice's --metrics-addr every second after known
traffic (conftest's `traffic`), and its HTTP API must give back exactly what
was sent: raw counter values through instant queries (no rate), so the
counts are exact.
"""

from __future__ import annotations

import json
import math
import time

import telhelpers as t

REQUEST_OUTCOMES = {"success", "validation", "not_found", "too_large", "overloaded", "not_ready",
                    "timeout", "runtime", "unauthorized"}
VERSIONED_INFER_ROUTE = "/v2/models/{model}/versions/{version}/infer"
INFER_ROUTE = "/v2/models/{model}/infer"


def _by(result, *keys, zeros=True):
    """{tuple of label values: value} of a query result (without the
    zero-valued series when not `zeros`: pre-created series are fine)."""
    return {tuple(m.get(k, "") for k in keys): v for m, v in result if zeros or v != 0}


def test_success_counts_per_version_are_exact(prometheus, traffic):
    for version in ("1", "2", "3"):
        want = traffic.successes(version)
        q = f'sluice_requests_total{{model="scale",version="{version}",outcome="success"}}'
        # Every version has its gRPC series too, at zero: this traffic is HTTP.
        got = [(m, v) for m, v in prometheus.query(q) if m.get("protocol") != "grpc" or v != 0]
        if want == 0:
            assert all(v == 0 for _, v in got), f"{q} = {got}, but no request went to version {version}"
            continue
        assert len(got) == 1, f"{q}: expected one series (protocol=\"http\"), got {got}\n{traffic.describe()}"
        labels, value = got[0]
        assert labels.get("protocol") == "http", f"{q}: protocol label is {labels.get('protocol')!r}, spec: \"http\""
        assert value == want, (f"{q} = {value}, but {want} successful requests were answered by "
                               f"scale version {version}\n{traffic.describe()}")


def test_failures_are_counted_under_their_outcome(prometheus, traffic):
    not_found = _by(prometheus.query('sum by (model, version) (sluice_requests_total{outcome="not_found"})'),
                    "model", "version", zeros=False)
    want = {("", ""): float(traffic.not_found_model), ("scale", ""): float(traffic.not_found_version)}
    assert not_found == want, (
        "sluice_requests_total{outcome=\"not_found\"} by (model, version): expected an unknown model "
        "under model=\"\",version=\"\" and an unknown version of scale under model=\"scale\",version=\"\" "
        f"(the spec: \"\" when the request failed before a version was chosen); got {not_found}, want {want}")

    validation = _by(prometheus.query('sum by (model, version) (sluice_requests_total{outcome="validation"})'),
                     "model", "version", zeros=False)
    assert sum(validation.values()) == traffic.validation, (
        f"sluice_requests_total{{outcome=\"validation\"}}: {validation}, but {traffic.validation} "
        "requests with a [1, 5] tensor for scale's [-1, 4] input were answered 400")
    assert validation == {("scale", "1"): float(traffic.validation)}, (
        "the 400s went to /v2/models/scale/versions/1/infer (version 1 chosen in the URL, its "
        f"signature refused the tensor): expected them under model=\"scale\",version=\"1\", got {validation}")

    outcomes = _by(prometheus.query("sum by (outcome) (sluice_requests_total)"), "outcome")
    unknown = {k[0] for k in outcomes} - REQUEST_OUTCOMES
    assert not unknown, f"outcome values outside the spec's list: {unknown} (all: {outcomes})"
    others = {k[0]: v for k, v in outcomes.items() if k[0] not in ("success", "validation", "not_found") and v}
    assert not others, f"requests counted under outcomes no request had: {others}\n{traffic.describe()}"
    protocols = _by(prometheus.query("sum by (protocol) (sluice_requests_total)"), "protocol")
    assert set(protocols) <= {("http",), ("grpc",)}, f"protocol label values: {protocols}; the spec has \"http\" and \"grpc\""
    # All of this traffic is HTTP: the gRPC series exist, at zero.
    assert protocols.get(("grpc",), 0) == 0, f"gRPC requests counted, none sent: {protocols}"


def test_request_duration_median_is_finite_and_positive(prometheus, traffic):
    q = ('histogram_quantile(0.5, sum by (le) '
         '(sluice_request_duration_seconds_bucket{model="scale",outcome="success"}))')
    got = prometheus.query(q)
    assert len(got) == 1, f"{q} = {got}"
    value = got[0][1]
    assert math.isfinite(value) and value > 0, f"{q} = {value}: not a finite positive number of seconds"
    assert value < 30, f"{q} = {value} s: not a plausible median for a 1x4 scale inference"
    count = prometheus.query('sum(sluice_request_duration_seconds_count{model="scale",outcome="success"})')
    want = sum(traffic.successes(v) for v in ("1", "2", "3"))
    assert count and count[0][1] == want, (
        f"sluice_request_duration_seconds_count of scale's successes = {count}, want {want}")


def test_model_versions_loaded_matches_the_repository_index(prometheus, traffic):
    status, _, body = traffic.server.request("POST", "/v2/repository/index", b"")
    assert status == 200, status
    ready = sum(1 for r in json.loads(body) if r["name"] == "scale" and r.get("state") == "READY")
    got = prometheus.query('sluice_model_versions_loaded{model="scale"}')
    assert [v for _, v in got] == [float(ready)], (
        f"sluice_model_versions_loaded{{model=\"scale\"}} = {got}, but the repository index has "
        f"{ready} READY versions of scale")


def test_resident_memory_is_positive(prometheus):
    got = prometheus.query("sluice_process_resident_memory_bytes")
    assert len(got) == 1, f"sluice_process_resident_memory_bytes: {got} (one unlabeled series expected)"
    labels, value = got[0]
    assert set(labels) <= {"__name__", "job", "instance"}, f"unexpected labels {labels}"
    assert 1 << 20 < value < 1 << 40, f"sluice_process_resident_memory_bytes = {value}: not a plausible RSS"


def test_http_server_duration_uses_route_templates(prometheus, traffic):
    rows = _by(prometheus.query(
        "sum by (http_route, http_request_method, http_response_status_code) "
        "(http_server_request_duration_seconds_count)"),
        "http_route", "http_request_method", "http_response_status_code")
    shown = "\n".join(f"  {k}: {v}" for k, v in sorted(rows.items()))
    routes = {k[0] for k in rows}

    raw = [r for r in routes if any(s in r for s in ("scale", "no_such_model", "/versions/1", "/versions/2",
                                                        "/versions/9", "/no/such/route"))]
    assert not raw, f"raw paths in http_route (the spec: the route template, never the raw path): {raw}\n{shown}"
    for r in routes:
        assert r == "" or r.startswith("/"), f"http_route {r!r} is neither a template nor \"\"\n{shown}"

    want = {
        (INFER_ROUTE, "POST", "200"): float(sum(traffic.unversioned.values())),
        (INFER_ROUTE, "POST", "404"): float(traffic.not_found_model),
        (VERSIONED_INFER_ROUTE, "POST", "200"): float(sum(traffic.explicit.values())),
        (VERSIONED_INFER_ROUTE, "POST", "404"): float(traffic.not_found_version),
        (VERSIONED_INFER_ROUTE, "POST", "400"): float(traffic.validation),
        ("", "GET", "404"): float(traffic.unmatched),
    }
    for key, value in want.items():
        assert rows.get(key) == value, (
            f"http_server_request_duration_seconds_count{{http_route={key[0]!r}, "
            f"http_request_method={key[1]!r}, http_response_status_code={key[2]!r}}} = {rows.get(key)}, "
            f"want {value}\n{traffic.describe()}\nall series:\n{shown}")

    others = _by(prometheus.query(
        "group by (url_scheme, network_protocol_name, network_protocol_version) "
        "(http_server_request_duration_seconds_count)"),
        "url_scheme", "network_protocol_name", "network_protocol_version")
    assert set(others) == {("http", "http", "1.1")}, (
        f"(url_scheme, network_protocol_name, network_protocol_version) values: {sorted(others)}; "
        "plain HTTP/1.1 requests should give (http, http, 1.1)")


def test_prometheus_stores_request_exemplars(prometheus, traffic):
    """Prometheus scrapes OpenMetrics (its default Accept header) and keeps
    the trace_id exemplars (--enable-feature=exemplar-storage)."""
    now = time.time()
    data = prometheus.api("/api/v1/query_exemplars", query="sluice_request_duration_seconds_bucket",
                          start=f"{now - 600:.3f}", end=f"{now + 60:.3f}")
    exemplars = [(series["seriesLabels"], e) for series in data for e in series.get("exemplars", [])]
    assert exemplars, ("Prometheus stored no exemplar for sluice_request_duration_seconds_bucket after "
                       f"{len(traffic.trace_ids)} sampled requests (query_exemplars answered {data})")
    for labels, e in exemplars:
        trace_id = e["labels"].get("trace_id", "")
        assert t.HEX32.match(trace_id), f"exemplar {e} on {labels}: trace_id is not 32 lower-case hex digits"
        assert trace_id in traffic.trace_ids, (
            f"exemplar trace_id {trace_id} on {labels} is not the trace id of any request sent "
            "(each carried a sampled traceparent)")
