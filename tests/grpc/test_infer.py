"""Inference through tritonclient.grpc: typed and raw contents, every
datatype (BYTES and FP16 through raw contents), several outputs, versions,
routing metadata, and the status codes of failures."""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

import oiphelpers as h

INT_TYPES = {
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
}
FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": ml_dtypes.bfloat16}


def _values(dtype):
    if dtype in INT_TYPES:
        info = np.iinfo(INT_TYPES[dtype])
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=INT_TYPES[dtype])
    if dtype in FLOAT_TYPES:
        t = FLOAT_TYPES[dtype]
        return np.array([[1.5, -2.25, 0.0], [3.140625, -0.0, 65504.0 if dtype == "FP16" else 1e4]], dtype=t)
    if dtype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    return np.array([[b"", b"hello", "h\u00e9llo".encode()], [b"tab\tnew\nline", b"x" * 1000, b"last"]], dtype=object)


def _infer_identity(client, dtype, values):
    inp = grpcclient.InferInput("INPUT0", list(values.shape), dtype)
    if dtype == "BF16":
        # tritonclient has no BF16 numpy type: raw little-endian bytes.
        inp._raw_content = values.tobytes()
    else:
        inp.set_data_from_numpy(values)
    return client.infer(f"identity_{dtype.lower()}", [inp])


@pytest.mark.parametrize(
    "dtype", ["BOOL", *INT_TYPES, "FP16", "FP32", "FP64", "BF16", "BYTES"]
)
def test_identity_roundtrip_raw_contents(client, dtype):
    values = _values(dtype)
    result = _infer_identity(client, dtype, values)
    out = result.get_output("OUTPUT0")
    assert out.datatype == dtype
    assert list(out.shape) == [2, 3]
    if dtype == "BF16":
        raw = result.get_response().raw_output_contents[0]
        assert raw == values.tobytes()
    else:
        got = result.as_numpy("OUTPUT0")
        if dtype == "BYTES":
            assert got.tolist() == values.tolist()
        else:
            np.testing.assert_array_equal(got, values)
            assert got.dtype == values.dtype


def _typed_request(model, name, dtype, shape, **contents):
    req = service_pb2.ModelInferRequest(model_name=model)
    t = req.inputs.add(name=name, datatype=dtype, shape=shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    return req


def _stub(server):
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(server.hostport)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(
    "dtype,field,values",
    [
        ("FP32", "fp32_contents", [1.5, -2.0, 0.25, 8.0]),
        ("INT8", "int_contents", [-128, 127, 0, 1]),
        ("UINT16", "uint_contents", [0, 65535, 7, 1]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1, 0, 5]),
        ("BOOL", "bool_contents", [True, False, False, True]),
        ("BYTES", "bytes_contents", [b"a", b"", b"c c", b"dd"]),
    ],
)
def test_typed_contents(server, dtype, field, values):
    channel, stub = _stub(server)
    with channel:
        req = _typed_request(f"identity_{dtype.lower()}", "INPUT0", dtype, [2, 2], **{field: values})
        resp = stub.ModelInfer(req)
    assert resp.model_name == f"identity_{dtype.lower()}"
    assert resp.outputs[0].datatype == dtype
    assert list(resp.outputs[0].shape) == [2, 2]
    raw = resp.raw_output_contents[0]
    if dtype == "BYTES":
        expected = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    else:
        np_type = {"FP32": np.float32, "BOOL": np.bool_, **INT_TYPES}[dtype]
        expected = np.array(values, dtype=np_type).tobytes()
    assert raw == expected


def test_typed_contents_out_of_range_is_invalid_argument(server):
    channel, stub = _stub(server)
    with channel, pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(_typed_request("identity_int8", "INPUT0", "INT8", [1, 1], int_contents=[300]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of the range of INT8" in e.value.details()


def test_typed_contents_wrong_count_is_invalid_argument(server):
    channel, stub = _stub(server)
    with channel, pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(_typed_request("scale", "x", "FP32", [1, 4], fp32_contents=[1.0, 2.0]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 4 elements" in e.value.details()


def test_add_sub_outputs_and_subset(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    r = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    r = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert r.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)


def _scale(client, x, version="", headers=None):
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("scale", [inp], model_version=version, headers=headers)


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_scale_explicit_version(client, version):
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    r = _scale(client, x, version)
    np.testing.assert_allclose(r.as_numpy("y"), x * int(version))
    assert r.get_response().model_version == version


def test_request_id_echoed(client):
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    r = client.infer("scale", [inp], request_id="req-42")
    assert r.get_response().id == "req-42"


def test_demo_models(client):
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    inp = grpcclient.InferInput("input", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("iris", [inp], model_version="1")
    assert r.as_numpy("label").tolist() == [0, 2]
    assert r.as_numpy("probabilities").shape == (2, 3)
    text = grpcclient.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array([b"Hello", b"WORLD", "\u00c9t\u00e9".encode()], dtype=object))
    r = client.infer("text", [text])
    assert r.as_numpy("lower").tolist() == [b"hello", b"world", "\u00e9t\u00e9".encode()]
    assert r.as_numpy("is_hello").tolist() == [True, False, False]


def test_response_metadata_names_the_version(server):
    channel, stub = _stub(server)
    with channel:
        req = _typed_request("scale", "x", "FP32", [1, 4], fp32_contents=[1, 1, 1, 1])
        req.model_version = "3"
        _, call = stub.ModelInfer.with_call(req)
    md = dict(call.initial_metadata())
    assert md["sluice-model-version"] == "3"
    # Version 3 is the default (stable) one.
    assert md["x-sluice-variant"] == "stable"
    assert "x-request-id" in md
    assert md["traceparent"].startswith("00-")


def _error(fn):
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value


def test_unknown_model_is_not_found(client):
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    e = _error(lambda: client.infer("no_such_model", [inp]))
    assert e.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'no_such_model'" in e.message()
    e = _error(lambda: client.infer("scale", [inp], model_version="9"))
    assert e.status() == "StatusCode.NOT_FOUND"


def test_wrong_dtype_and_shape_are_invalid_argument(client):
    inp = grpcclient.InferInput("x", [1, 4], "INT32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.int32))
    e = _error(lambda: client.infer("scale", [inp]))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "FP32" in e.message()
    inp = grpcclient.InferInput("x", [1, 5], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    e = _error(lambda: client.infer("scale", [inp]))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    inp = grpcclient.InferInput("nope", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    e = _error(lambda: client.infer("scale", [inp]))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"


def test_raw_contents_size_mismatch_is_invalid_argument(client):
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp._raw_content = b"\x00" * 12
    e = _error(lambda: client.infer("scale", [inp]))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"


def test_truncated_bytes_element_is_invalid_argument(client):
    inp = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp._raw_content = (10).to_bytes(4, "little") + b"abc"
    e = _error(lambda: client.infer("identity_bytes", [inp]))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"


def test_unimplemented_rpcs_say_so(client):
    e = _error(lambda: client.get_system_shared_memory_status())
    assert e.status() == "StatusCode.UNIMPLEMENTED"
    assert "not implemented by Sluice" in e.message()


def test_message_over_the_size_limit_is_refused(make_server):
    s = make_server(only={"scale": ["1"]}, demo=False, extra_args=["--max-body-bytes", "1000"])
    c = grpcclient.InferenceServerClient(s.hostport)
    e = _error(lambda: _scale(c, np.zeros((100, 4), dtype=np.float32)))
    # tonic refuses it before any handler runs, with its own code.
    assert e.status() == "StatusCode.OUT_OF_RANGE"
    assert "the limit is: 1000 bytes" in e.message()
    np.testing.assert_allclose(_scale(c, np.ones((1, 4), dtype=np.float32)).as_numpy("y"), 1)


def test_api_keys_from_metadata(make_server, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text("app:s3cret-s3cret-s3cret\n")
    s = make_server(only={"scale": ["1"]}, demo=False, extra_args=["--api-keys-file", keys])
    c = grpcclient.InferenceServerClient(s.hostport)
    assert c.is_server_live() and c.is_server_ready()
    x = np.ones((1, 4), dtype=np.float32)
    e = _error(lambda: _scale(c, x))
    assert e.status() == "StatusCode.UNAUTHENTICATED"
    e = _error(lambda: _scale(c, x, headers={"authorization": "Bearer wrong"}))
    assert e.status() == "StatusCode.UNAUTHENTICATED"
    r = _scale(c, x, headers={"authorization": "Bearer s3cret-s3cret-s3cret"})
    np.testing.assert_allclose(r.as_numpy("y"), x)


def test_grpc_requests_are_counted_with_protocol_grpc(server, client):
    before = _count(server)
    _scale(client, np.ones((1, 4), dtype=np.float32), "1")
    assert _count(server) == before + 1


def _count(server):
    _, _, body = h.http_request(server.port, "GET", "/metrics")
    line = 'sluice_requests_total{model="scale",version="1",protocol="grpc",outcome="success"} '
    for row in body.decode().splitlines():
        if row.startswith(line):
            return int(row[len(line):])
    return 0
