"""Hot swap under load: versions appear and disappear while client threads
infer continuously, and no request fails or is answered by the wrong
version. Every request goes to 127.0.0.1 only; loops are bounded in count
and time."""

from __future__ import annotations

import shutil

import pytest

import generate  # models/generate.py (oiphelpers puts models/ on sys.path)
import oiphelpers as h


@pytest.mark.slow
def test_hot_swap_twenty_versions_under_load(make_server, tmp_path):
    server = make_server(only={"scale": ["1"]}, demo=False)
    load = h.Load(server.port, threads=8)
    published = [1]
    try:
        assert load.wait_for_version(1), load.summary()
        for n in range(2, 22):  # 20 new versions
            src = generate.write_scale_model(tmp_path / f"scale-k{n}.onnx", float(n))
            h.publish(server, "scale", src, n)
            published.append(n)
            assert load.wait_for_version(n), (
                f"no response named version {n} within {h.WAIT_FOR_VERSION_S}s (or a request failed)\n"
                f"{load.summary()}\nfailures: {load.failures[:5]}")
            # Keep at most the 2 newest versions on disk.
            for old in h.versions_on_disk(server.models_dir)[:-2]:
                shutil.rmtree(server.models_dir / "scale" / str(old))
            assert len(h.versions_on_disk(server.models_dir)) <= 2
        load.run_for(0.5)
    finally:
        load.stop()
    h.report(f"hot swap: {load.summary()}")
    load.check()
    for v in published:
        assert load.seen(v), f"version {v} never answered\n{load.summary()}"
    # The server's view agrees with the disk: only the last two are ready.
    rows = h.index_rows(server)
    ready = sorted(int(v) for v, r in rows.items() if r["state"] == "READY")
    assert ready == [20, 21], rows
    status, doc = h.infer_scale_raw(server.port, h.X)
    assert status == 200 and doc["model_version"] == "21", doc


def test_delete_newest_version_rolls_back_under_load(make_server):
    server = make_server(only={"scale": ["1", "2", "3"]}, demo=False)
    load = h.Load(server.port, threads=4)
    try:
        assert load.wait_for_version(3), load.summary()
        shutil.rmtree(server.models_dir / "scale" / "3")
        assert load.wait_for_version(2), f"version 2 never answered after removing 3\n{load.summary()}"
        shutil.rmtree(server.models_dir / "scale" / "2")
        assert load.wait_for_version(1), f"version 1 never answered after removing 2\n{load.summary()}"
        load.run_for(0.3)
    finally:
        load.stop()
    h.report(f"rollback: {load.summary()}")
    load.check()
    status, doc = h.infer_scale_raw(server.port, h.X, version=3)
    assert status == 404, doc


def test_corrupt_version_leaves_previous_serving(make_server, tmp_path):
    server = make_server(only={"scale": ["1"]}, demo=False)
    load = h.Load(server.port, threads=4)
    try:
        assert load.wait_for_version(1), load.summary()
        h.publish(server, "scale", h.CORRUPT_ONNX, 2)
        row = h.wait_for_index(server, 2, "UNAVAILABLE")
        assert row["reason"], row
        load.run_for(0.5)
        with load.lock:
            assert set(load.per_version) == {"1"}, load.summary()
        assert h.index_rows(server)["1"]["state"] == "READY"
        # The broken version is known but not ready: 503 with the reason.
        status, headers, body = server.request("POST", "/v2/models/scale/versions/2/infer", h.SCALE_BODY)
        assert status == 503, body
        assert "2" in h.error_message(status, headers, body)
        c = server.client()
        assert c.is_model_ready("scale", "2") is False
        assert c.is_model_ready("scale", "1") is True
        assert c.is_model_ready("scale") is True
        c.close()
        # A good version after the bad one takes over.
        h.publish(server, "scale", generate.write_scale_model(tmp_path / "k3.onnx", 3.0), 3)
        assert load.wait_for_version(3), load.summary()
        load.run_for(0.3)
    finally:
        load.stop()
    h.report(f"corrupt: {load.summary()}, reason: {row['reason']!r}")
    load.check()


def test_incompatible_signature_refused_old_keeps_serving(make_server):
    server = make_server(only={"scale": ["1"]}, demo=False)
    load = h.Load(server.port, threads=4)
    try:
        assert load.wait_for_version(1), load.summary()
        other = h.FIXTURE_MODELS / "scale_other_sig" / "1" / "model.onnx"
        h.publish(server, "scale", other, 2)
        row = h.wait_for_index(server, 2, "UNAVAILABLE")
        assert "signature" in row["reason"], row
        load.run_for(0.5)
        with load.lock:
            assert set(load.per_version) == {"1"}, load.summary()
        md = server.client().get_model_metadata("scale")
        assert md["versions"] == ["1"]
        assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    finally:
        load.stop()
    h.report(f"signature: {load.summary()}, reason: {row['reason']!r}")
    load.check()
