"""Health, metadata, statistics, the repository extension and gRPC health
checking through tritonclient.grpc and grpc_health_v1."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

import oiphelpers as h


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    md = client.get_server_metadata()
    assert md.name == "sluice"
    # The same source as GET /v2.
    for ext in ("binary_tensor_data", "model_repository", "statistics"):
        assert ext in md.extensions


def test_server_metadata_matches_http(server, client):
    import json

    _, _, body = h.http_request(server.port, "GET", "/v2")
    http = json.loads(body)
    md = client.get_server_metadata()
    assert (md.name, md.version, list(md.extensions)) == (http["name"], http["version"], http["extensions"])


def test_model_ready(client):
    assert client.is_model_ready("scale")
    assert client.is_model_ready("scale", "2")
    assert not client.is_model_ready("scale", "9")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata(client):
    md = client.get_model_metadata("add_sub")
    assert md.name == "add_sub"
    assert list(md.versions) == ["1"]
    assert md.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    md = client.get_model_metadata("scale", "2")
    assert list(md.versions) == ["1", "2", "3"]
    md = client.get_model_metadata("fixed_shape")
    assert list(md.inputs[0].shape) == [2, 3]


def test_model_metadata_unknown_is_not_found(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_inference_statistics_count_inferences(client):
    before = client.get_inference_statistics("identity_int16", "1").model_stats[0]
    inp = grpcclient.InferInput("INPUT0", [1, 2], "INT16")
    inp.set_data_from_numpy(np.array([[1, 2]], dtype=np.int16))
    for _ in range(3):
        client.infer("identity_int16", [inp])
    after = client.get_inference_statistics("identity_int16", "1").model_stats[0]
    assert after.name == "identity_int16" and after.version == "1"
    assert after.inference_count == before.inference_count + 3
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.last_inference > 0
    every = client.get_inference_statistics().model_stats
    assert {(s.name, s.version) for s in every} >= {("scale", "1"), ("scale", "3"), ("iris", "2")}
    assert len(client.get_inference_statistics("scale").model_stats) == 3


def test_repository_index(client):
    rows = client.get_model_repository_index().models
    names = {(m.name, m.version, m.state) for m in rows}
    assert ("scale", "3", "READY") in names
    assert ("add_sub", "1", "READY") in names


def test_load_and_unload(make_server):
    s = make_server(only={"scale": ["1"], "add_sub": ["1"]}, demo=False)
    c = grpcclient.InferenceServerClient(s.hostport)
    c.unload_model("add_sub")
    assert not c.is_model_ready("add_sub")
    rows = {m.name: m.state for m in c.get_model_repository_index().models}
    assert rows["add_sub"] == "UNAVAILABLE"
    c.load_model("add_sub")
    assert c.is_model_ready("add_sub")
    with pytest.raises(InferenceServerException) as e:
        c.load_model("no_such_model")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_health_check(server):
    with grpc.insecure_channel(server.hostport) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        SERVING = health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status == SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="scale")).status == SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no_such_model"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_follows_unload(make_server):
    s = make_server(only={"scale": ["1"], "add_sub": ["1"]}, demo=False)
    with grpc.insecure_channel(s.hostport) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service="add_sub"), timeout=20)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        grpcclient.InferenceServerClient(s.hostport).unload_model("add_sub")
        assert next(stream).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stream.cancel()
