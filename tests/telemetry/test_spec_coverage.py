"""The black-box side of the spec check: after traffic, every metric in the
exposition is in the table of docs/specs/instrumentation.md, every metric in
that table appears, with the spec's type and exactly the spec's label names,
and label values stay within the spec's bounded sets.
"""

from __future__ import annotations

import re

import pytest

import telhelpers as t

REQUEST_OUTCOMES = {"success", "validation", "not_found", "too_large", "overloaded", "not_ready",
                    "timeout", "runtime", "unauthorized"}


@pytest.fixture(scope="module")
def exposition(traffic):
    """The text exposition once spans have been exported (so that
    sluice_trace_spans_exported_total has a sample)."""
    last = {}

    def exported():
        status, _, text = traffic.server.metrics()
        assert status == 200, status
        last["text"] = text
        return "sluice_trace_spans_exported_total" in text

    t.wait_until(exported, timeout=20.0, interval=0.25)
    return t.parse_exposition(last["text"])


def _owner(name: str, spec: dict):
    """The spec metric a sample name belongs to, or None."""
    for m in spec.values():
        if name in t.exposition_names_for(m):
            return m
    return None


def test_every_exposed_metric_is_in_the_spec(exposition):
    spec = t.spec_metrics()
    assert not exposition.errors, f"unparsable lines: {exposition.errors[:10]}"
    extra = sorted(n for n in exposition.names() if _owner(n, spec) is None)
    assert not extra, (f"metrics in /metrics but not in {t.SPEC.name}: {extra} (histograms are "
                       "<name>_bucket/_sum/_count, counters are named with _total in the table)")


def test_every_spec_metric_appears_after_traffic(exposition):
    spec = t.spec_metrics()
    names = exposition.names()
    # This suite's gateway serves a directory; the registry-on-object-storage
    # metrics are checked by tests/registry.
    missing = {m.name: sorted(t.exposition_names_for(m) - names) for m in spec.values()
               if t.exposition_names_for(m) - names and not m.remote_only}
    assert not missing, f"spec metrics absent from /metrics after traffic (missing sample names): {missing}"


def test_types_match_the_spec(exposition):
    spec = t.spec_metrics()
    wrong = {}
    for m in spec.values():
        got = exposition.types.get(m.name)
        if got != m.type:
            wrong[m.name] = f"# TYPE says {got!r}, spec: {m.type!r}"
    assert not wrong, f"metric types: {wrong} (declared TYPEs: {exposition.types})"


def test_label_names_are_exactly_the_specs(exposition):
    spec = t.spec_metrics()
    wrong = {}
    for s in exposition.samples:
        m = _owner(s.name, spec)
        if m is None:
            continue
        names = set(s.labels) - ({"le"} if s.name.endswith("_bucket") and m.type == "histogram" else set())
        if names != set(m.labels):
            wrong.setdefault(m.name, set()).add(
                f"labels {sorted(names)}, spec {sorted(m.labels)} (e.g. {s.line})")
    assert not wrong, f"label names differ from the spec: { {k: sorted(v) for k, v in wrong.items()} }"


def test_label_values_are_bounded(exposition, traffic):
    models = {"scale", ""}
    bad = []
    for s in exposition.samples:
        if not s.name.startswith("sluice_"):
            continue
        lab = s.labels
        if "model" in lab and lab["model"] not in models:
            bad.append(f"model={lab['model']!r} (not a model of the repository): {s.line}")
        if "version" in lab and not re.fullmatch(r"|[1-9][0-9]*", lab["version"]):
            bad.append(f"version={lab['version']!r} (not a decimal version or \"\"): {s.line}")
        if "protocol" in lab and lab["protocol"] not in ("http", "grpc"):
            bad.append(f"protocol={lab['protocol']!r}: {s.line}")
        if "outcome" in lab:
            allowed = (REQUEST_OUTCOMES if s.name.startswith(("sluice_requests_total", "sluice_request_duration"))
                       else {"success", "failure"} if s.name.startswith("sluice_model_loads")
                       else {"success", "dropped"} if s.name.startswith("sluice_trace_spans")
                       else {"compared", "failed", "dropped"} if s.name.startswith("sluice_shadow_requests")
                       else {"sent", "dropped", "failed"} if s.name.startswith("sluice_capture_records")
                       else {"success", "failure"} if s.name.startswith("sluice_capture_export_duration")
                       else set())
            if lab["outcome"] not in allowed:
                bad.append(f"outcome={lab['outcome']!r} (spec: {sorted(allowed)}): {s.line}")
        if "model" in lab and lab["model"] == "" and lab.get("version", "") != "":
            bad.append(f"an unknown model with a version: {s.line}")
    for s in exposition.samples:
        if s.name.startswith("http_server_request_duration_seconds"):
            route = s.labels.get("http_route", "")
            if "scale" in route or "no_such_model" in route or "/no/such" in route:
                bad.append(f"raw path in http_route: {s.line}")
    assert not bad, "unbounded or out-of-spec label values:\n" + "\n".join(bad[:20])


def test_openmetrics_exposition_has_the_same_metrics(traffic, exposition):
    """OpenMetrics names counter families without _total (samples keep it)
    and may add _created samples; otherwise the same metrics."""
    status, _, text = traffic.server.metrics(accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    om = t.parse_exposition(text)
    assert not om.errors, f"unparsable OpenMetrics lines: {om.errors[:10]}"
    spec = t.spec_metrics()
    names = {n for n in om.names() if not n.endswith("_created")}
    extra = sorted(n for n in names if _owner(n, spec) is None)
    missing = sorted(n for m in spec.values() if not m.remote_only
                     for n in t.exposition_names_for(m) if n not in names)
    assert not extra and not missing, f"OpenMetrics exposition: not in spec {extra}; spec but absent {missing}"
    for m in spec.values():
        family = m.name[:-len("_total")] if m.type == "counter" else m.name
        assert om.types.get(family) == m.type, (
            f"OpenMetrics '# TYPE {family}' is {om.types.get(family)!r}, spec: {m.type} "
            f"(declared: {om.types})")
