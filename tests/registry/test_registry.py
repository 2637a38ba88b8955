"""A registry on object storage: `sluice serve --models s3://BUCKET/PREFIX`
against moto's S3 server on 127.0.0.1, with real gateways and the real CLI.

Convergence is checked by counting polls, not by timing: a replica must
serve a change after at most two successful polls that began once the change
was in the bucket (the one in progress when it landed, and the next).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import oiphelpers as h
from conftest import ADMIN_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "telemetry"))
import telhelpers as t  # noqa: E402

SCALE = {v: h.FIXTURE_MODELS / "scale" / str(v) / "model.onnx" for v in (1, 2, 3)}
WAIT_S = 60.0


def metadata(server) -> dict:
    status, _, body = server.request("GET", "/v2")
    assert status == 200, body
    return json.loads(body)["registry"]


def metric(server, name: str, labels: str = "") -> float:
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", body.decode(), re.M)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


def syncs(server) -> int:
    return int(metric(server, "sluice_registry_syncs_total", 'outcome="success"'))


def index(server) -> list:
    status, _, body = server.request("POST", "/v2/repository/index", b"{}")
    assert status == 200, body
    return json.loads(body)


def ready_versions(server, model="scale") -> set:
    return {int(e["version"]) for e in index(server)
            if e["name"] == model and e["state"] == "READY"}


def wait_until(what: str, fn, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def converged_within_two_polls(servers, what: str, done) -> list:
    """Waits for `done(server)` on every server; asserts each got there
    within two polls that started after the call. Returns the polls used."""
    start = [syncs(s) for s in servers]
    used = []
    for s, s0 in zip(servers, start):
        wait_until(f"{what} on port {s.port}", lambda: done(s))
        polls = syncs(s) - s0
        assert polls <= 2, f"{what} took {polls} polls on port {s.port}"
        used.append(polls)
    return used


def admin(server, method, path, body=None):
    status, _, data = server.request(
        method, path, json.dumps(body).encode() if body is not None else None,
        {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
    return status, json.loads(data) if data else {}


def test_publish_to_object_storage_and_serve_from_it(registry, gateways):
    assert registry.publish("scale", SCALE[1]) == 1
    listed = registry.cli("models", "list", "--models", registry.url)
    assert listed.returncode == 0 and "scale" in listed.stdout and "1  manifest" in listed.stdout, listed

    (gw,) = gateways(registry.url)
    status, answer = h.infer_scale_raw(gw.port, h.X)
    assert status == 200 and answer["model_version"] == "1", answer
    assert answer["outputs"][0]["data"] == h.X[0]
    entry = [e for e in index(gw) if e["name"] == "scale"][0]
    assert entry["verified"] is True, entry

    reg = metadata(gw)
    assert reg["source"] == registry.url and not reg["degraded"] and reg["problems"] == [], reg
    assert re.fullmatch(r"[0-9a-f]{64}", reg["revision"]), reg
    assert metric(gw, "sluice_registry_degraded") == 0
    assert metric(gw, "sluice_registry_revision") == int(reg["revision"][:13], 16)
    assert abs(metric(gw, "sluice_registry_last_success_timestamp_seconds") - time.time()) < 600

    # Every metric the spec reserves for a registry on object storage is
    # exposed, with the spec's type and labels.
    status, _, body = gw.request("GET", "/metrics")
    exposition = t.parse_exposition(body.decode())
    remote = [m for m in t.spec_metrics().values() if m.remote_only]
    assert len(remote) == 4, remote
    for m in remote:
        assert t.exposition_names_for(m) <= exposition.names(), m.name

    # Over gRPC (same port), ServerMetadata names the revision in its
    # response metadata (the message itself has no field for it).
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ServerMetadata.with_call(service_pb2.ServerMetadataRequest(), timeout=10)
        meta = dict(call.initial_metadata())
    assert answer.name == "sluice"
    assert meta.get("sluice-registry-revision") == reg["revision"], meta
    assert meta.get("sluice-registry-degraded") == "false", meta

    # The version number is claimed: publishing an existing one is refused.
    again = registry.cli("models", "publish", "scale", SCALE[2], "--version", "1",
                         "--models", registry.url)
    assert again.returncode != 0 and "already exists" in again.stderr, again


def test_partial_uploads_are_never_loaded(registry, gateways, tmp_path):
    registry.publish("scale", SCALE[1])
    (gw,) = gateways(registry.url)
    load = h.Load(gw.port, threads=4)
    try:
        # 1. The model file without its manifest: an upload in progress.
        registry.put("scale/2/model.onnx", SCALE[2].read_bytes())
        s0 = syncs(gw)
        wait_until("two more polls", lambda: syncs(gw) >= s0 + 2)
        assert ready_versions(gw) == {1}
        assert metadata(gw)["problems"] == []  # not a problem: not published yet

        # 2. A manifest whose model file does not match (the file is still
        #    being replaced): refused with the reason, version 1 serves on.
        local = tmp_path / "local"
        local.mkdir()
        done = h.publish_cli(local, "scale", SCALE[2], 2)
        assert done.returncode == 0, done.stderr
        registry.put("scale/2/model.onnx", SCALE[3].read_bytes())
        registry.put("scale/2/manifest.json", (local / "scale" / "2" / "manifest.json").read_bytes())
        problems = wait_until("the mismatch reported",
                              lambda: metadata(gw)["problems"])
        assert "scale version 2" in problems[0] and "does not match its manifest" in problems[0], problems
        assert ready_versions(gw) == {1}
        assert not metadata(gw)["degraded"]

        # 3. The right file lands: version 2 loads and takes the traffic.
        registry.put("scale/2/model.onnx", SCALE[2].read_bytes())
        assert load.wait_for_version(2, timeout=WAIT_S), load.summary()
        assert metadata(gw)["problems"] == []
        load.run_for(0.5)
    finally:
        load.stop()
    h.report(f"partial uploads: {load.summary()}")
    load.check()


def test_three_replicas_converge_on_versions_and_policies(registry, gateways):
    registry.publish("scale", SCALE[1])
    replicas = gateways(registry.url, n=3)
    loads = [h.Load(r.port, threads=3) for r in replicas]
    try:
        # A new version.
        assert registry.publish("scale", SCALE[2]) == 2
        polls = converged_within_two_polls(replicas, "version 2 served",
                                           lambda s: ready_versions(s) == {1, 2})
        for load in loads:
            assert load.wait_for_version(2, timeout=WAIT_S), load.summary()
        revisions = {metadata(r)["revision"] for r in replicas}
        assert len(revisions) == 1, revisions
        assert len({metric(r, "sluice_registry_revision") for r in replicas}) == 1

        # A policy change made on one replica reaches the others.
        status, answer = admin(replicas[0], "PUT", "/admin/models/scale/policy",
                               {"stable": 1, "canary": {"version": 2, "weight": 0.5}})
        assert status == 200, answer
        policy = {"stable": 1, "canary": {"version": 2, "weight": 0.5}}
        polls += converged_within_two_polls(
            replicas[1:], "the policy applied",
            lambda s: admin(s, "GET", "/admin/models/scale/policy")[1].get("policy") == policy)
        # Version 1 serves again (stable), beside the canary.
        for load in loads:
            load.per_version.clear()
            assert load.wait_for_version(1, timeout=WAIT_S) and load.wait_for_version(2), load.summary()
        revisions = {metadata(r)["revision"] for r in replicas}
        assert len(revisions) == 1, revisions

        # A deleted version goes from every replica.
        registry.put("scale/policy.toml", b"stable = 1\n")
        wait_until("policy back to stable only",
                   lambda: all(admin(r, "GET", "/admin/models/scale/policy")[1].get("policy") == {"stable": 1}
                               for r in replicas))
        for rel in ("scale/2/manifest.json", "scale/2/model.onnx"):
            registry.delete(rel)
        polls += converged_within_two_polls(replicas, "version 2 removed",
                                            lambda s: ready_versions(s) == {1})
        for load in loads:
            load.run_for(0.3)
    finally:
        for load in loads:
            load.stop()
    for i, load in enumerate(loads):
        h.report(f"replica {i}: {load.summary()}")
    h.report(f"polls to converge per change and replica: {polls} (each at most 2)")
    for load in loads:
        load.check()

    # The audit log lives in the bucket; its chain verifies.
    verified = registry.cli("audit", "verify", "--models", registry.url)
    assert verified.returncode == 0, verified.stderr
    assert "1 records, chain intact" in verified.stdout, verified.stdout


def test_an_unreachable_registry_degrades_without_failing_requests(registry, gateways, tmp_path):
    registry.publish("scale", SCALE[1])
    cache = tmp_path / "shared-cache"
    (gw,) = gateways(registry.url, cache=cache)
    load = h.Load(gw.port, threads=4)
    try:
        load.run_for(0.3)
        registry.s3.stop()
        wait_until("degraded reported", lambda: metadata(gw)["degraded"])
        assert metric(gw, "sluice_registry_degraded") == 1
        assert metric(gw, "sluice_registry_syncs_total", 'outcome="failure"') >= 1
        load.run_for(1.0)
        status, _, body = gw.request("GET", "/v2/health/ready")
        assert status == 200, body

        # A replica that starts while the registry is down serves its cache.
        (second,) = gateways(registry.url, cache=cache)
        status, answer = h.infer_scale_raw(second.port, h.X)
        assert status == 200 and answer["model_version"] == "1", answer
        assert metadata(second)["degraded"]
        assert second.stop() == 0  # one writer per cache once the store is back

        # The store comes back empty: no bucket, then an empty one. Neither
        # unloads what is served; the replica stays degraded until models
        # are back.
        registry.s3.start()
        wait_until("the missing bucket reported",
                   lambda: "NoSuchBucket" in (metadata(gw)["error"] or ""))
        registry.s3.client().create_bucket(Bucket=registry.bucket)
        wait_until("the empty bucket reported",
                   lambda: "lists no objects" in (metadata(gw)["error"] or ""))
        assert metadata(gw)["degraded"] and ready_versions(gw) == {1}
        registry.publish("scale", SCALE[1], version=1)
        registry.publish("scale", SCALE[2], version=2)
        wait_until("healthy again", lambda: not metadata(gw)["degraded"])
        assert load.wait_for_version(2, timeout=WAIT_S), load.summary()
    finally:
        load.stop()
    h.report(f"registry down and back: {load.summary()}")
    load.check()
