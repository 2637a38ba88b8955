"""The live model repository as an operator edits it: version policies and
model.toml changes, manifests, models added and removed, files copied in
place non-atomically. Each test has its own server."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

import generate  # models/generate.py
import oiphelpers as h
from oiphelpers import X, Load, index_rows, publish

WAIT_S = 15.0


def wait_until(predicate, what, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout}s; last seen: {last}")


def metadata_versions(server, model="scale"):
    status, _, body = server.request("GET", f"/v2/models/{model}")
    return (json.loads(body)["versions"] if status == 200 else None), status


def write_toml(server, text, model="scale"):
    # Write then rename, so the watcher never reads half a file.
    path = server.models_dir / model / "model.toml"
    tmp = path.with_name(".model.toml.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def test_version_policy_and_live_changes(make_server):
    server = make_server(only={"scale": ["1", "2", "3"]}, demo=False)
    write_toml(server, "version_policy = { latest = 1 }\n")
    wait_until(lambda: (metadata_versions(server)[0] == ["3"], metadata_versions(server)),
               "policy latest=1 leaving only version 3")
    c = server.client()
    assert c.is_model_ready("scale", "3") is True
    assert c.is_model_ready("scale", "1") is False
    rows = index_rows(server)
    assert rows["1"]["state"] == "UNAVAILABLE" and "version_policy" in rows["1"]["reason"], rows
    assert c.get_model_config("scale")["version_policy"] == {"latest": {"num_versions": 1}}
    status, doc = h.infer_scale_raw(server.port, X, version=1)
    assert status in (404, 503), (status, doc)

    write_toml(server, "version_policy = { specific = [1, 2] }\n")
    wait_until(lambda: (metadata_versions(server)[0] == ["1", "2"], metadata_versions(server)),
               "policy specific=[1,2]")
    status, doc = h.infer_scale_raw(server.port, X)
    assert status == 200 and doc["model_version"] == "2", doc
    assert doc["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert c.get_model_config("scale")["version_policy"] == {"specific": {"versions": [1, 2]}}

    os.remove(server.models_dir / "scale" / "model.toml")
    wait_until(lambda: (metadata_versions(server)[0] == ["1", "2", "3"], metadata_versions(server)),
               "removing model.toml going back to every version")
    c.close()


def test_invalid_model_toml_keeps_serving(make_server):
    server = make_server(only={"scale": ["1", "2"]}, demo=False)
    load = Load(server.port, threads=2)
    try:
        assert load.wait_for_version(2), load.summary()
        write_toml(server, 'instances = "many"\nno_such_key = 1\n')

        def model_row():
            rows = index_rows(server)
            row = rows.get("")
            return (row is not None and row["state"] == "UNAVAILABLE"), rows

        rows = wait_until(model_row, "an index row for the invalid model.toml")
        reason = rows[""]["reason"]
        assert "model.toml" in reason or "instances" in reason, reason
        load.run_for(0.5)
        # Versions loaded under the last good config keep serving.
        assert rows["2"]["state"] == "READY", rows
        write_toml(server, "instances = 1\n")
        wait_until(lambda: ("" not in index_rows(server), index_rows(server)), "the config error clearing")
        load.run_for(0.3)
    finally:
        load.stop()
    load.check()
    with load.lock:
        assert set(load.per_version) == {"2"}, load.summary()


def test_require_manifests(make_server, tmp_path):
    server = make_server(only={"scale": ["1"]}, demo=False, extra_args=["--require-manifests"])
    rows = index_rows(server)
    assert rows["1"]["state"] == "UNAVAILABLE", rows
    assert "manifest" in rows["1"]["reason"], rows
    status, doc = h.infer_scale_raw(server.port, X)
    assert status == 503, (status, doc)
    publish(server, "scale", generate.write_scale_model(tmp_path / "k2.onnx", 2.0), 2)
    wait_until(lambda: (index_rows(server).get("2", {}).get("state") == "READY", index_rows(server)),
               "the published (manifested) version loading")
    assert index_rows(server)["2"].get("verified") is True
    status, doc = h.infer_scale_raw(server.port, X)
    assert status == 200 and doc["model_version"] == "2", doc


def test_tampered_manifest_is_refused(make_server, tmp_path):
    """A published version whose model.onnx no longer matches its manifest
    does not load (with a reason); the previous version keeps serving."""
    server = make_server(only={"scale": ["1"]}, demo=False)
    staging = tmp_path / "staging"
    staging.mkdir()
    publish_dir = tmp_path / "other-repo"
    publish_dir.mkdir()
    done = h.publish_cli(publish_dir, "scale", generate.write_scale_model(staging / "k2.onnx", 2.0), 2)
    assert done.returncode == 0, done.stderr
    # Swap in a different model under the same manifest, then move it in.
    generate.write_scale_model(publish_dir / "scale" / "2" / "model.onnx", 7.0)
    os.rename(publish_dir / "scale" / "2", server.models_dir / "scale" / "2")
    rows = wait_until(lambda: (index_rows(server).get("2", {}).get("state") == "UNAVAILABLE", index_rows(server)),
                      "the tampered version being refused")
    assert "manifest" in rows["2"]["reason"] or "sha256" in rows["2"]["reason"], rows
    status, doc = h.infer_scale_raw(server.port, X)
    assert status == 200 and doc["model_version"] == "1", doc


def test_model_added_and_removed_live(make_server):
    server = make_server(only={"scale": ["1"]}, demo=False)
    c = server.client()
    assert c.is_model_ready("add_sub") is False
    # Like `cp -r`: not atomic.
    shutil.copytree(h.FIXTURE_MODELS / "add_sub", server.models_dir / "add_sub")
    wait_until(lambda: (c.is_model_ready("add_sub"), None), "add_sub becoming ready")
    body = h.json_body([{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
                        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16}])
    status, _, data = server.request("POST", "/v2/models/add_sub/infer", body)
    assert status == 200, data
    assert {o["name"]: o["data"] for o in json.loads(data)["outputs"]}["OUTPUT0"] == [3] * 16
    shutil.rmtree(server.models_dir / "add_sub")
    wait_until(lambda: (server.request("POST", "/v2/models/add_sub/infer", body)[0] == 404, None),
               "add_sub going away (404)")
    assert all(r["name"] != "add_sub" for r in c.get_model_repository_index())
    assert c.is_model_ready("scale") is True
    c.close()


def test_non_atomic_copy_in_place_under_load(make_server, tmp_path):
    """A version written in place slowly (half the file, a pause of several
    rescans, then the rest) never breaks serving: the half file fails to
    load and the previous version answers; the complete file then loads."""
    server = make_server(only={"scale": ["1"]}, demo=False)
    full = generate.write_scale_model(tmp_path / "k2.onnx", 2.0).read_bytes()
    load = Load(server.port, threads=4)
    try:
        assert load.wait_for_version(1), load.summary()
        vdir = server.models_dir / "scale" / "2"
        vdir.mkdir()
        with open(vdir / "model.onnx", "wb") as f:
            f.write(full[: len(full) // 2])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(1.5)  # three rescan intervals
            f.write(full[len(full) // 2:])
            f.flush()
            os.fsync(f.fileno())
        assert load.wait_for_version(2), f"the completed version 2 never answered\n{load.summary()}"
        load.run_for(0.3)
    finally:
        load.stop()
    h.report(f"non-atomic copy: {load.summary()}")
    load.check()
    assert index_rows(server)["2"]["state"] == "READY"


def test_statistics_survive_other_versions_changing(make_server, tmp_path):
    """Statistics are per version: publishing version 2 leaves version 1's
    counts as they were."""
    server = make_server(only={"scale": ["1"]}, demo=False)
    c = server.client()
    for _ in range(5):
        assert h.infer_scale_raw(server.port, X)[0] == 200
    before = c.get_inference_statistics("scale", "1")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert before >= 5
    publish(server, "scale", generate.write_scale_model(tmp_path / "k2.onnx", 2.0), 2)
    wait_until(lambda: (c.is_model_ready("scale", "2"), None), "version 2 ready")
    stats = {e["version"]: e for e in c.get_inference_statistics("scale")["model_stats"]}
    assert stats["1"]["inference_stats"]["success"]["count"] == before
    assert stats["2"]["inference_stats"]["success"]["count"] == 0
    x = np.ones((1, 4), dtype=np.float32)
    import tritonclient.http as httpclient
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    assert c.infer("scale", [inp]).get_response()["model_version"] == "2"
    stats = {e["version"]: e for e in c.get_inference_statistics("scale")["model_stats"]}
    assert stats["2"]["inference_stats"]["success"]["count"] == 1
    c.close()
