"""Health, metadata, configuration, statistics and the model repository
extension, through tritonclient's HTTP client as a Triton user would call
them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import oiphelpers as h

ALL_DTYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
              "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"]
TRITON_CONFIG_NAME = {dt: f"TYPE_{dt}" for dt in ALL_DTYPES} | {"BYTES": "TYPE_STRING"}


def add_sub_inputs(a, b, binary=True):
    i0 = httpclient.InferInput("INPUT0", list(a.shape), "INT32")
    i0.set_data_from_numpy(a, binary_data=binary)
    i1 = httpclient.InferInput("INPUT1", list(b.shape), "INT32")
    i1.set_data_from_numpy(b, binary_data=binary)
    return [i0, i1]


def test_server_live_and_ready(client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata_lists_extensions(client):
    md = client.get_server_metadata()
    assert md["name"] == "sluice"
    assert isinstance(md["version"], str) and md["version"]
    for ext in ("binary_tensor_data", "model_repository", "statistics", "model_configuration"):
        assert ext in md["extensions"], md


def test_model_ready_with_and_without_version(client):
    assert client.is_model_ready("add_sub") is True
    assert client.is_model_ready("add_sub", "1") is True
    for v in ("1", "2", "3"):
        assert client.is_model_ready("scale", v) is True
    assert client.is_model_ready("scale", "4") is False
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("scale", "latest") is False


def test_model_ready_status_codes(server):
    assert server.request("GET", "/v2/models/scale/versions/2/ready")[0] == 200
    status, headers, body = server.request("GET", "/v2/models/no_such_model/ready")
    assert status == 404
    assert "no_such_model" in h.error_message(status, headers, body)
    status, headers, body = server.request("GET", "/v2/models/scale/versions/9/ready")
    assert status == 404
    assert "9" in h.error_message(status, headers, body)


def test_model_metadata_add_sub(client):
    md = client.get_model_metadata("add_sub")
    assert md["name"] == "add_sub"
    assert md["versions"] == ["1"]
    assert md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    assert md["outputs"] == [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]


def test_model_metadata_versions_and_fixed_shape(client):
    md = client.get_model_metadata("scale")
    assert md["versions"] == ["1", "2", "3"]
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    md2 = client.get_model_metadata("scale", "2")
    assert md2["name"] == "scale" and md2["inputs"] == md["inputs"]
    fixed = client.get_model_metadata("fixed_shape")
    assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 3]}]
    assert fixed["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 3]}]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_model_metadata_every_datatype(client, dtype):
    md = client.get_model_metadata(f"identity_{dtype.lower()}")
    assert md["inputs"] == [{"name": "INPUT0", "datatype": dtype, "shape": [-1, -1]}]
    assert md["outputs"] == [{"name": "OUTPUT0", "datatype": dtype, "shape": [-1, -1]}]
    cfg = client.get_model_config(f"identity_{dtype.lower()}")
    assert cfg["input"][0]["data_type"] == TRITON_CONFIG_NAME[dtype]
    assert cfg["output"][0]["data_type"] == TRITON_CONFIG_NAME[dtype]


def test_model_metadata_demo_models(client):
    mixed = client.get_model_metadata("mixed")
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in mixed["inputs"]} == {
        ("features", "FP32", (-1, 3)), ("counts", "INT64", (-1, 2)), ("mask", "BOOL", (-1, 3)),
    }
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in mixed["outputs"]} == {
        ("masked_sum", "FP32", (-1,)), ("counts_total", "INT64", (-1,)),
        ("any_masked", "BOOL", (-1,)), ("scaled", "FP64", (-1, 3)),
    }
    text = client.get_model_metadata("text")
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    iris = client.get_model_metadata("iris")
    assert iris["versions"] == ["1", "2"]


def test_model_metadata_unknown(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert "no_such_model" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("scale", "7")
    assert "7" in e.value.message()


def test_model_config_triton_shape(client):
    cfg = client.get_model_config("add_sub")
    assert cfg["name"] == "add_sub"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["max_batch_size"] == 0
    assert cfg["input"] == [
        {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1, 16]},
        {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [-1, 16]},
    ]
    assert [o["name"] for o in cfg["output"]] == ["OUTPUT0", "OUTPUT1"]
    assert all(o["data_type"] == "TYPE_INT32" and o["dims"] == [-1, 16] for o in cfg["output"])
    assert cfg["version_policy"] == {"all": {}}
    assert cfg["instance_group"] and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["instance_group"][0]["count"] >= 1


def test_model_config_with_version_and_text(client):
    cfg = client.get_model_config("scale", "3")
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    text = client.get_model_config("text")
    assert text["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [-1]}]
    mixed = client.get_model_config("mixed")
    types = {o["name"]: o["data_type"] for o in mixed["output"]}
    assert types == {"masked_sum": "TYPE_FP32", "counts_total": "TYPE_INT64",
                     "any_masked": "TYPE_BOOL", "scaled": "TYPE_FP64"}


def _stats_entry(client, model, version):
    stats = client.get_inference_statistics(model, version)
    entries = stats["model_stats"]
    assert len(entries) == 1, stats
    e = entries[0]
    assert e["name"] == model and e["version"] == version
    return e


def test_inference_statistics_count_inferences(client):
    before = _stats_entry(client, "add_sub", "1")
    inf = before["inference_stats"]
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(inf[key]) >= {"count", "ns"}, (key, inf)

    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.int32)
    for _ in range(3):
        client.infer("add_sub", add_sub_inputs(a, b))
    # One failure: a missing input is refused by the model (a 400).
    with pytest.raises(InferenceServerException):
        client.infer("add_sub", add_sub_inputs(a, b)[:1])

    after = _stats_entry(client, "add_sub", "1")
    ai, bi = after["inference_stats"], before["inference_stats"]
    assert ai["success"]["count"] >= bi["success"]["count"] + 3
    assert ai["success"]["ns"] > bi["success"]["ns"]
    assert ai["fail"]["count"] >= bi["fail"]["count"] + 1
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert ai[key]["count"] >= bi[key]["count"] + 3, (key, ai[key], bi[key])
    assert after["inference_count"] >= before["inference_count"] + 3
    assert after["execution_count"] >= before["execution_count"] + 3
    assert after["last_inference"] > 0


def test_inference_statistics_all_models_and_versions(client):
    every = client.get_inference_statistics()["model_stats"]
    names = {(e["name"], e["version"]) for e in every}
    assert {("scale", "1"), ("scale", "2"), ("scale", "3"), ("add_sub", "1"),
            ("iris", "1"), ("iris", "2"), ("text", "1")} <= names
    per_model = client.get_inference_statistics("scale")["model_stats"]
    assert sorted(e["version"] for e in per_model) == ["1", "2", "3"]
    with pytest.raises(InferenceServerException):
        client.get_inference_statistics("no_such_model")


def test_repository_index(client, server):
    index = client.get_model_repository_index()
    assert isinstance(index, list)
    rows = {(r["name"], r.get("version", "")): r for r in index}
    for key in [("add_sub", "1"), ("scale", "1"), ("scale", "2"), ("scale", "3"),
                ("iris", "1"), ("iris", "2"), ("mixed", "1"), ("text", "1"),
                ("identity_bf16", "1"), ("fixed_shape", "1")]:
        assert key in rows, key
        assert rows[key]["state"] == "READY", rows[key]
    # {"ready": true} lists only ready versions (raw: tritonclient cannot say it).
    status, headers, body = server.request("POST", "/v2/repository/index", b'{"ready": true}')
    assert status == 200
    assert all(r["state"] == "READY" for r in json.loads(body))


def test_load_and_unload(make_server):
    s = make_server(only={"add_sub": ["1"], "scale": ["1", "2"]})
    c = s.client()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int32)
    res = c.infer("add_sub", add_sub_inputs(a, b))
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)

    c.unload_model("add_sub")
    assert c.is_model_ready("add_sub") is False
    assert c.is_model_ready("add_sub", "1") is False
    with pytest.raises(InferenceServerException) as e:
        c.infer("add_sub", add_sub_inputs(a, b))
    assert "add_sub" in e.value.message()
    status, headers, body = s.request(
        "POST", "/v2/models/add_sub/infer",
        h.json_body([{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a.tolist()},
                     {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b.tolist()}]))
    assert status == 503, (status, body)
    assert "unloaded" in h.error_message(status, headers, body)
    rows = [r for r in c.get_model_repository_index() if r["name"] == "add_sub"]
    assert rows and all(r["state"] == "UNAVAILABLE" for r in rows), rows
    assert any("unload" in r.get("reason", "") for r in rows), rows
    # The other models are untouched; the rescan does not bring it back.
    assert c.is_model_ready("scale") is True
    import time
    time.sleep(1.2)  # more than two rescan intervals
    assert c.is_model_ready("add_sub") is False

    c.load_model("add_sub")
    assert c.is_model_ready("add_sub") is True
    assert c.is_model_ready("add_sub", "1") is True
    res = c.infer("add_sub", add_sub_inputs(a, b))
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)

    with pytest.raises(InferenceServerException):
        c.load_model("no_such_model")
    with pytest.raises(InferenceServerException):
        c.unload_model("no_such_model")
    c.close()
