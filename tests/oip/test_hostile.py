"""Hostile input: every malformed request gets the right 4xx with a JSON
`{"error": ...}` that says what was wrong, never a 500, and the server keeps
answering correctly afterwards."""

from __future__ import annotations

import concurrent.futures
import json
import random
import socket
import time

import numpy as np
import pytest

import oiphelpers as h

JSON = {"Content-Type": "application/json"}


def one(name, shape, datatype, data, **extra):
    t = {"name": name, "shape": shape, "datatype": datatype, "data": data}
    t.update(extra)
    return json.dumps({"inputs": [t]}).encode()


def bin_case(header, *blobs, header_length=None):
    body, headers = h.binary_body(header, *blobs)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    return body, headers


SCALE_OK = one("x", [1, 4], "FP32", [1, 2, 3, 4])
SCALE_HEADER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": 16}}]}
FOUR_FLOATS = np.array([1, 2, 3, 4], dtype="<f4").tobytes()

# (id, path, body, headers, status, substrings the error message must contain)
CASES = [
    ("malformed-json", "/v2/models/scale/infer", b'{"inputs": [}', JSON, 400, ["JSON"]),
    ("truncated-json", "/v2/models/scale/infer", SCALE_OK[:-9], JSON, 400, ["JSON"]),
    ("json-array", "/v2/models/scale/infer", b"[1, 2, 3]", JSON, 400, ["object", "array"]),
    ("json-string", "/v2/models/scale/infer", b'"inputs"', JSON, 400, ["object", "string"]),
    ("json-number", "/v2/models/scale/infer", b"42", JSON, 400, ["object", "number"]),
    ("json-null", "/v2/models/scale/infer", b"null", JSON, 400, ["object", "null"]),
    ("invalid-utf8", "/v2/models/scale/infer", b'{"inputs": "\xff\xfe\xfd"}', JSON, 400, ["UTF-8"]),
    ("empty-body", "/v2/models/scale/infer", b"", JSON, 400, ["empty"]),
    ("whitespace-body", "/v2/models/scale/infer", b"  \n ", JSON, 400, ["empty"]),
    ("missing-inputs", "/v2/models/scale/infer", b'{"id": "a"}', JSON, 400, ["inputs"]),
    ("inputs-not-array", "/v2/models/scale/infer", b'{"inputs": {"x": 1}}', JSON, 400, ["inputs"]),
    ("no-inputs-at-all", "/v2/models/scale/infer", b'{"inputs": []}', JSON, 400, ["missing input 'x'"]),
    ("unknown-input-name", "/v2/models/scale/infer", one("z", [1, 4], "FP32", [1, 2, 3, 4]), JSON, 400,
     ["'z'", "'x'"]),
    ("duplicate-input", "/v2/models/scale/infer",
     json.dumps({"inputs": [json.loads(SCALE_OK)["inputs"][0]] * 2}).encode(), JSON, 400, ["duplicate", "x"]),
    ("wrong-datatype", "/v2/models/scale/infer", one("x", [1, 4], "FP64", [1, 2, 3, 4]), JSON, 400,
     ["FP64", "FP32"]),
    ("unknown-datatype", "/v2/models/scale/infer", one("x", [1, 4], "FLOAT32", [1, 2, 3, 4]), JSON, 400,
     ["FLOAT32", "datatype"]),
    ("lowercase-datatype", "/v2/models/scale/infer", one("x", [1, 4], "fp32", [1, 2, 3, 4]), JSON, 400,
     ["fp32", "datatype"]),
    ("missing-datatype", "/v2/models/scale/infer",
     json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode(), JSON, 400,
     ["datatype"]),
    ("missing-shape", "/v2/models/scale/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode(), JSON, 400,
     ["shape"]),
    ("shape-not-array", "/v2/models/scale/infer", one("x", "1,4", "FP32", [1, 2, 3, 4]), JSON, 400, ["shape"]),
    ("shape-float-dim", "/v2/models/scale/infer", one("x", [1.5, 4], "FP32", [1, 2, 3, 4]), JSON, 400,
     ["shape"]),
    ("wrong-rank", "/v2/models/scale/infer", one("x", [4], "FP32", [1, 2, 3, 4]), JSON, 400,
     ["shape", "[4]"]),
    ("wrong-fixed-dim", "/v2/models/fixed_shape/infer", one("x", [3, 3], "FP32", [0] * 9), JSON, 400,
     ["[3, 3]", "[2, 3]"]),
    ("wrong-dim-dynamic-model", "/v2/models/scale/infer", one("x", [2, 2], "FP32", [1, 2, 3, 4]), JSON, 400,
     ["[2, 2]", "[-1, 4]"]),
    ("element-count-too-few", "/v2/models/scale/infer", one("x", [2, 4], "FP32", [1, 2, 3, 4]), JSON, 400,
     ["8", "4"]),
    ("element-count-too-many", "/v2/models/scale/infer", one("x", [1, 4], "FP32", list(range(9))), JSON, 400,
     ["4", "9"]),
    ("huge-shape-little-data", "/v2/models/scale/infer", one("x", [2 ** 40, 8], "FP32", [1, 2, 3, 4]), JSON,
     400, ["1099511627776"]),
    ("huge-shape-overflow", "/v2/models/scale/infer", one("x", [2 ** 62, 2 ** 62], "FP32", [1]), JSON,
     400, ["shape"]),
    ("huge-shape-binary", "/v2/models/scale/infer",
     *bin_case({"inputs": [{"name": "x", "shape": [2 ** 40, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": 16}}]}, FOUR_FLOATS), 400, ["binary_data_size"]),
    ("negative-dim", "/v2/models/scale/infer", one("x", [-1, 4], "FP32", [1, 2, 3, 4]), JSON, 400,
     ["shape", "-1"]),
    ("uint8-300", "/v2/models/identity_uint8/infer", one("INPUT0", [1, 2], "UINT8", [1, 300]), JSON, 400,
     ["UINT8", "300", "range"]),
    ("uint32-minus-1", "/v2/models/identity_uint32/infer", one("INPUT0", [1, 1], "UINT32", [-1]), JSON, 400,
     ["UINT32", "-1", "range"]),
    ("int64-2-pow-63", "/v2/models/identity_int64/infer",
     b'{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"INT64","data":[9223372036854775808]}]}', JSON, 400,
     ["INT64", "9223372036854775808", "range"]),
    ("int32-1.5", "/v2/models/identity_int32/infer", one("INPUT0", [1, 2], "INT32", [1, 1.5]), JSON, 400,
     ["INT32", "1.5", "integer"]),
    ("bool-2", "/v2/models/identity_bool/infer", one("INPUT0", [1, 2], "BOOL", [True, 2]), JSON, 400,
     ["BOOL", "2", "true or false"]),
    ("string-for-fp32", "/v2/models/scale/infer", one("x", [1, 4], "FP32", [1, 2, "three", 4]), JSON, 400,
     ["FP32", "three"]),
    ("number-for-bytes", "/v2/models/identity_bytes/infer", one("INPUT0", [1, 1], "BYTES", [7]), JSON, 400,
     ["BYTES", "7"]),
    ("null-element", "/v2/models/scale/infer", one("x", [1, 4], "FP32", [1, None, 3, 4]), JSON, 400, ["null"]),
    ("object-element", "/v2/models/scale/infer", one("x", [1, 4], "FP32", [1, {"a": 1}, 3, 4]), JSON, 400,
     ["object"]),
    ("data-not-array", "/v2/models/scale/infer", one("x", [1, 4], "FP32", "1,2,3,4"), JSON, 400, ["data"]),
    ("nan-literal", "/v2/models/scale/infer",
     b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}', JSON, 400, ["JSON"]),
    ("fp64-1e400", "/v2/models/identity_fp64/infer",
     b'{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP64","data":[1e400]}]}', JSON, 400, ["JSON"]),
    ("deeply-nested-data", "/v2/models/scale/infer",
     b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":' + b"[" * 100000 + b"1" + b"]" * 100000
     + b"}]}", JSON, 400, ["JSON"]),
    ("deeply-nested-envelope", "/v2/models/scale/infer",
     b'{"id": "a", "parameters": {"p": ' + b"[" * 100000 + b"]" * 100000 + b'}, "inputs": []}', JSON, 400,
     ["JSON"]),
    ("id-not-string", "/v2/models/scale/infer",
     json.dumps({"id": 5, "inputs": json.loads(SCALE_OK)["inputs"]}).encode(), JSON, 400, ["id"]),
    ("parameters-not-object", "/v2/models/scale/infer",
     json.dumps({"parameters": [1], "inputs": json.loads(SCALE_OK)["inputs"]}).encode(), JSON, 400,
     ["parameters"]),
    ("binary-data-output-not-bool", "/v2/models/scale/infer",
     json.dumps({"parameters": {"binary_data_output": "yes"}, "inputs": json.loads(SCALE_OK)["inputs"]}).encode(),
     JSON, 400, ["binary_data_output"]),
    ("outputs-not-array", "/v2/models/scale/infer",
     json.dumps({"inputs": json.loads(SCALE_OK)["inputs"], "outputs": "y"}).encode(), JSON, 400, ["outputs"]),
    ("unknown-requested-output", "/v2/models/scale/infer",
     json.dumps({"inputs": json.loads(SCALE_OK)["inputs"], "outputs": [{"name": "nope"}]}).encode(), JSON, 400,
     ["'nope'", "'y'"]),
    ("duplicate-requested-output", "/v2/models/scale/infer",
     json.dumps({"inputs": json.loads(SCALE_OK)["inputs"], "outputs": [{"name": "y"}, {"name": "y"}]}).encode(),
     JSON, 400, ["duplicate", "y"]),
    # Triton's binary extension.
    ("header-length-bigger-than-body", "/v2/models/scale/infer",
     *bin_case(SCALE_HEADER, FOUR_FLOATS, header_length="100000"), 400,
     ["Inference-Header-Content-Length", "100000"]),
    ("header-length-smaller-than-json", "/v2/models/scale/infer",
     *bin_case(SCALE_HEADER, FOUR_FLOATS, header_length="20"), 400, ["JSON"]),
    ("header-length-zero", "/v2/models/scale/infer",
     *bin_case(SCALE_HEADER, FOUR_FLOATS, header_length="0"), 400, ["empty"]),
    ("header-length-non-numeric", "/v2/models/scale/infer",
     *bin_case(SCALE_HEADER, FOUR_FLOATS, header_length="twelve"), 400, ["Inference-Header-Content-Length"]),
    ("header-length-negative", "/v2/models/scale/infer",
     *bin_case(SCALE_HEADER, FOUR_FLOATS, header_length="-5"), 400, ["Inference-Header-Content-Length"]),
    ("binary-size-past-end", "/v2/models/scale/infer",
     *bin_case({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": 32}}]}, FOUR_FLOATS), 400,
     ["binary_data_size", "32"]),
    ("binary-size-smaller-than-shape", "/v2/models/scale/infer",
     *bin_case({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": 8}}]}, FOUR_FLOATS[:8]), 400,
     ["binary_data_size", "16", "8"]),
    ("binary-leftover-bytes", "/v2/models/scale/infer",
     *bin_case(SCALE_HEADER, FOUR_FLOATS, b"\x00" * 7), 400, ["23", "16"]),
    ("binary-size-without-header", "/v2/models/scale/infer",
     json.dumps(SCALE_HEADER).encode() + b" " * 16, JSON, 400, ["Inference-Header-Content-Length"]),
    ("binary-without-header-not-utf8", "/v2/models/scale/infer",
     json.dumps(SCALE_HEADER).encode() + FOUR_FLOATS, JSON, 400, ["UTF-8"]),
    ("binary-size-negative", "/v2/models/scale/infer",
     *bin_case({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": -16}}]}, FOUR_FLOATS), 400, ["binary_data_size"]),
    ("binary-size-string", "/v2/models/scale/infer",
     *bin_case({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": "16"}}]}, FOUR_FLOATS), 400, ["binary_data_size"]),
    ("data-and-binary", "/v2/models/scale/infer",
     *bin_case({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4],
                            "parameters": {"binary_data_size": 16}}]}, FOUR_FLOATS), 400,
     ["data", "binary_data_size"]),
    ("no-data", "/v2/models/scale/infer",
     json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}).encode(), JSON, 400,
     ["data"]),
    ("bytes-length-prefix-past-end", "/v2/models/identity_bytes/infer",
     *bin_case({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES",
                            "parameters": {"binary_data_size": 4 + 3 + 4 + 2}}]},
               (3).to_bytes(4, "little") + b"abc" + (1000).to_bytes(4, "little") + b"xy"), 400,
     ["BYTES element 1", "1004"]),
    ("bytes-truncated-length-prefix", "/v2/models/identity_bytes/infer",
     *bin_case({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": 2}}]}, b"\x05\x00"), 400, ["BYTES element 0"]),
    ("bytes-too-many-elements", "/v2/models/identity_bytes/infer",
     *bin_case({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": 10}}]},
               h.serialize_bytes_elements([b"a", b"b"])), 400, ["1", "2"]),
    ("bytes-huge-shape-binary", "/v2/models/identity_bytes/infer",
     *bin_case({"inputs": [{"name": "INPUT0", "shape": [2 ** 40, 2 ** 20], "datatype": "BYTES",
                            "parameters": {"binary_data_size": 5}}]}, h.serialize_bytes_elements([b"a"])),
     400, ["shape"]),
    # Routing.
    ("unknown-model", "/v2/models/no_such_model/infer", SCALE_OK, JSON, 404, ["no_such_model"]),
    ("unknown-version", "/v2/models/scale/versions/99/infer", SCALE_OK, JSON, 404, ["99"]),
    ("version-zero", "/v2/models/scale/versions/0/infer", SCALE_OK, JSON, 404, ["0"]),
    ("non-numeric-version", "/v2/models/scale/versions/latest/infer", SCALE_OK, JSON, 404, ["latest"]),
    ("version-leading-zero", "/v2/models/scale/versions/01/infer", SCALE_OK, JSON, 404, ["01"]),
    ("version-negative", "/v2/models/scale/versions/-1/infer", SCALE_OK, JSON, 404, ["-1"]),
    ("version-huge", "/v2/models/scale/versions/99999999999999999999999/infer", SCALE_OK, JSON, 404,
     ["99999999999999999999999"]),
    ("unknown-route", "/v2/nothing/here", SCALE_OK, JSON, 404, ["/v2/nothing/here"]),
    ("infer-trailing-segment", "/v2/models/scale/infer/more", SCALE_OK, JSON, 404, ["/v2/models/scale/infer/more"]),
    ("unknown-model-metadata-post", "/v1/models/scale:predict", SCALE_OK, JSON, 404, ["/v1/models/scale:predict"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(server, case):
    _, path, body, headers, want_status, parts = case
    status, rheaders, data = server.request("POST", path, body, headers)
    assert status == want_status, f"{case[0]}: got {status} {data[:400]!r}"
    message = h.error_message(status, rheaders, data)
    for p in parts:
        assert p in message, f"{case[0]}: error {message!r} should mention {p!r}"


@pytest.mark.parametrize("method,path,status,part", [
    ("GET", "/v2/models/scale/infer", 405, "GET"),
    ("PUT", "/v2/models/scale/versions/1/infer", 405, "PUT"),
    ("DELETE", "/v2/models/scale", 405, "DELETE"),
    ("POST", "/v2/health/ready", 405, "POST"),
    ("GET", "/v2/repository/index", 405, "GET"),
    ("GET", "/v2/nothing", 404, "/v2/nothing"),
    # ("GET", "/" is the in-process drift collector's page.)
    ("GET", "/no/such/page", 404, "/no/such/page"),
    ("GET", "/v2/models/no_such_model", 404, "no_such_model"),
    ("GET", "/v2/models/no_such_model/config", 404, "no_such_model"),
    ("GET", "/v2/models/scale/versions/abc", 404, "abc"),
    ("GET", "/v2/models/scale/versions/5/config", 404, "5"),
])
def test_wrong_method_or_route(server, method, path, status, part):
    got, headers, body = server.request(method, path)
    assert got == status, (got, body)
    message = h.error_message(got, headers, body)
    assert part in message, message


def test_repository_index_bad_body(server):
    status, headers, body = server.request("POST", "/v2/repository/index", b"{ready")
    assert status == 400
    assert "JSON" in h.error_message(status, headers, body)


def test_burst_of_concurrent_garbage(server):
    """200 garbage requests at once from 32 threads, then a correct one."""
    rng = random.Random(1234)
    garbage = [c for c in CASES if c[4] == 400]

    def fire(i):
        case = garbage[i % len(garbage)]
        body = case[2]
        if i % 5 == 0:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        try:
            status, rheaders, data = server.request("POST", case[1], body, case[3], timeout=60)
        except OSError as e:
            return ("exception", repr(e))
        return (status, data[:200])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(fire, range(200)))
    bad = [r for r in results if not (isinstance(r[0], int) and 400 <= r[0] < 500)]
    assert not bad, f"{len(bad)} of 200 garbage requests were not answered with a 4xx: {bad[:5]}"
    status, doc = h.infer_scale_raw(server.port, [[1, 2, 3, 4]], version=2)
    assert status == 200, doc
    assert doc["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


def test_zz_server_still_serves_after_the_battery(server, client):
    """Runs after the battery (file order): the server is alive and right."""
    assert server.alive()
    assert client.is_server_ready()
    for v in ("1", "2", "3"):
        status, doc = h.infer_scale_raw(server.port, [[1, 2, 3, 4], [0.5, -1, 8, 0]], version=v)
        assert status == 200, doc
        assert doc["outputs"][0]["data"] == [x * int(v) for x in [1, 2, 3, 4, 0.5, -1, 8, 0]]
    status, rheaders, data = server.request("POST", "/v2/models/add_sub/infer", h.json_body([
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [5] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16}]))
    assert status == 200
    outs = {o["name"]: o["data"] for o in json.loads(data)["outputs"]}
    assert outs == {"OUTPUT0": [8] * 16, "OUTPUT1": [2] * 16}


# --------------------------------------------------------------------------
# Body size limits, on a server with --max-body-bytes 1 MiB.

LIMIT = 1 << 20


@pytest.fixture
def small_server(make_server):
    return make_server(only={"scale": ["1"]}, extra_args=["--max-body-bytes", str(LIMIT)], demo=False)


def test_content_length_over_limit_refused_before_body(small_server):
    """A declared 10 MiB body is refused with 413 at once, without sending
    any of it (the socket times out if the server waits for the body)."""
    req = (b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n")
    started = time.monotonic()
    try:
        status, headers, body = h.raw_exchange(small_server.port, req, timeout=10)
    except socket.timeout:
        pytest.fail("no answer within 10 s: the server waited for the 10 MiB body instead of refusing it")
    elapsed = time.monotonic() - started
    assert status == 413, body
    message = h.error_message(status, headers, body)
    assert str(LIMIT) in message and "10485760" in message, message
    print(f"413 after {elapsed:.3f}s")


def test_content_length_one_over_limit(small_server):
    head = (b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode())
    status, headers, data = h.send_while_reading(small_server.port, head, [b" " * 65536] * 16 + [b" "])
    assert status == 413
    assert str(LIMIT) in h.error_message(status, headers, data)


def test_chunked_body_over_limit(small_server):
    """A chunked body (no Content-Length) is refused with 413 once it passes
    the limit."""
    chunk = b" " * 65536
    head = (b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    # 4 MiB in all, 4x the limit.
    chunks = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 64 + [b"0\r\n\r\n"]
    status, headers, body = h.send_while_reading(small_server.port, head, chunks)
    assert status == 413, body
    assert str(LIMIT) in h.error_message(status, headers, body)


def test_expect_100_continue_over_limit(small_server):
    """With `Expect: 100-continue` and a declared body over the limit, the
    answer is a final 413, not 100 Continue (the client never sends it)."""
    req = (b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
           b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n")
    try:
        status, headers, body = h.raw_exchange(small_server.port, req, timeout=10)
    except socket.timeout:
        pytest.fail("no answer within 10 s to an over-limit Expect: 100-continue request")
    assert status == 413, body
    assert str(LIMIT) in h.error_message(status, headers, body)


def test_small_server_still_serves_after_limits(small_server):
    req = (b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Content-Length: 999999999999\r\nConnection: close\r\n\r\n")
    status, _, _ = h.raw_exchange(small_server.port, req, timeout=10)
    assert status == 413
    # A request just under the limit (padded JSON) is fine.
    payload = h.json_body([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}])
    padded = payload + b" " * (LIMIT - len(payload))
    assert len(padded) == LIMIT
    status, headers, data = small_server.request("POST", "/v2/models/scale/infer", padded, JSON)
    assert status == 200, data[:300]
    assert json.loads(data)["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
