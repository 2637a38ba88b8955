"""Exporting never blocks requests: with the OTLP endpoint on a closed
loopback port, every request still succeeds promptly, the spans are counted
as dropped, and SIGTERM still exits promptly.
"""

from __future__ import annotations

import http.client
import time

import pytest

import telhelpers as t

REQUESTS = 200
DROPPED_WAIT_S = 25.0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_dead_collector_does_not_block_requests(make_sluice, protocol):
    closed = t.free_port()  # bound, then closed: nothing listens there
    server = make_sluice(metrics=True, extra_args=["--otlp-endpoint", f"http://127.0.0.1:{closed}",
                                                   "--otlp-protocol", protocol])
    body = t.scale_body()
    failures, latencies = [], []
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    started = time.monotonic()
    try:
        for i in range(REQUESTS):
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v2/models/scale/infer", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                failures.append((i, repr(e)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                continue
            latencies.append(time.monotonic() - t0)
            if resp.status != 200:
                failures.append((i, resp.status, data[:200]))
            if time.monotonic() - started > 60:
                pytest.fail(f"[{protocol}] {i + 1} requests took over 60 s with a dead collector")
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    assert not failures, f"[{protocol}] {len(failures)} of {REQUESTS} requests failed, first: {failures[:5]}"
    slowest = max(latencies)
    assert slowest < 2.0, (f"[{protocol}] slowest request {slowest:.3f}s with a dead collector "
                           f"(median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms): exporting blocks")

    last = {}

    def dropped():
        status, _, text = server.metrics()
        exp = t.parse_exposition(text)
        last["dropped"] = exp.value("sluice_trace_spans_exported_total", outcome="dropped")
        last["success"] = exp.value("sluice_trace_spans_exported_total", outcome="success")
        last["lines"] = [s.line for s in exp.find("sluice_trace_spans_exported_total")]
        return last["dropped"] > 0

    waited = time.monotonic()
    ok = t.wait_until(dropped, timeout=DROPPED_WAIT_S, interval=0.5)
    waited = time.monotonic() - waited
    assert ok, (f"[{protocol}] {REQUESTS} sampled requests with the collector at closed port {closed}: "
                f"sluice_trace_spans_exported_total{{outcome=\"dropped\"}} still 0 after {DROPPED_WAIT_S}s; "
                f"lines: {last.get('lines')}")
    assert last["success"] == 0, f"[{protocol}] spans counted as exported to a closed port: {last['lines']}"
    t.h.report(f"[{protocol}] dead collector: {REQUESTS} requests in {elapsed:.2f}s (slowest "
               f"{slowest * 1000:.1f} ms); {last['dropped']:.0f} spans dropped, seen after {waited:.1f}s")

    stop_started = time.monotonic()
    code = server.stop()
    took = time.monotonic() - stop_started
    assert code == 0 and took < 12, (f"[{protocol}] SIGTERM with a dead collector: exit code {code} after "
                                     f"{took:.1f}s (shutdown must not hang on the exporter)")
