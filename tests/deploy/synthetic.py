"""Synthetic Sluice metrics, shaped by the spec, as OpenMetrics text for
`promtool tsdb create-blocks-from openmetrics`: every metric of
docs/specs/instrumentation.md, with every label it declares, as a scraped
gateway would give them (plus the target's `job` and `instance`), sampled
every 15 s. A Prometheus loaded with them shows whether each dashboard query
finds data, not only whether it parses.
"""

from __future__ import annotations

import promspec

STEP_S = 15
JOB = "sluice"
INSTANCE = "127.0.0.1:8000"

# Values for each label (outcome: per metric, as the spec's "Label values" say).
LABEL_VALUES = {
    "model": ["resnet", "mnist"],
    "version": ["1"],
    "protocol": ["http"],
    "http_request_method": ["POST"],
    "http_route": ["/v2/models/{model}/infer", "/v2/health/ready"],
    "http_response_status_code": ["200", "500"],
    "url_scheme": ["http"],
    "network_protocol_name": ["http"],
    "network_protocol_version": ["1.1"],
    "role": ["stable", "canary", "shadow"],
    "agreement": ["agree", "disagree"],
    "decision": ["hold", "advance", "promote", "rollback"],
}
OUTCOMES = {
    "sluice_requests_total": ["success", "validation", "runtime"],
    "sluice_request_duration_seconds": ["success", "validation", "runtime"],
    "sluice_model_loads_total": ["success", "failure"],
    "sluice_trace_spans_exported_total": ["success", "dropped"],
    "sluice_shadow_requests_total": ["compared", "failed", "dropped"],
    "sluice_capture_records_total": ["sent", "dropped", "failed"],
    "sluice_capture_export_duration_seconds": ["success", "failure"],
}
LATENCY_BOUNDS = [0.001, 0.01, 0.1, 1.0]
LATENCY_SHARES = [0.2, 0.6, 0.9, 0.99]
BATCH_BOUNDS = [1, 2, 4, 8]
BATCH_SHARES = [0.5, 0.7, 0.9, 1.0]
GAUGE_VALUES = {
    "sluice_model_versions_loaded": 1,
    "sluice_process_resident_memory_bytes": 123456789,
}


def _labelsets(metric: promspec.Metric) -> list[dict[str, str]]:
    sets: list[dict[str, str]] = [{"job": JOB, "instance": INSTANCE}]
    for label in sorted(metric.labels):
        values = OUTCOMES.get(metric.name, ["success"]) if label == "outcome" else LABEL_VALUES.get(label, ["x"])
        sets = [{**s, label: v} for s in sets for v in values]
    return sets


def _fmt(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}"


def openmetrics(spec: promspec.Spec, start: int, end: int) -> str:
    """Samples of every spec metric from `start` to `end` (Unix seconds)."""
    times = list(range(start, end + 1, STEP_S))
    lines: list[str] = []
    for m in spec.metrics.values():
        family = m.name[: -len("_total")] if m.type == "counter" and m.name.endswith("_total") else m.name
        lines.append(f"# TYPE {family} {m.type}")
        for labels in _labelsets(m):
            for t in times:
                elapsed = t - start
                if m.type == "counter":
                    lines.append(f"{m.name}{_fmt(labels)} {elapsed * 0.5} {t}")
                elif m.type == "gauge":
                    lines.append(f"{m.name}{_fmt(labels)} {GAUGE_VALUES.get(m.name, 3)} {t}")
                elif m.type == "histogram":
                    batch = m.name == "sluice_batch_size"
                    bounds, shares = (BATCH_BOUNDS, BATCH_SHARES) if batch else (LATENCY_BOUNDS, LATENCY_SHARES)
                    count = elapsed * 2
                    for le, share in zip(bounds, shares):
                        lines.append(f"{m.name}_bucket{_fmt({**labels, 'le': str(le)})} {count * share} {t}")
                    lines.append(f"{m.name}_bucket{_fmt({**labels, 'le': '+Inf'})} {count} {t}")
                    lines.append(f"{m.name}_count{_fmt(labels)} {count} {t}")
                    lines.append(f"{m.name}_sum{_fmt(labels)} {count * (2.0 if batch else 0.02)} {t}")
                else:
                    raise AssertionError(f"{m.name}: unknown metric type {m.type!r} in the spec")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
