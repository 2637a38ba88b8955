"""The wire format over raw HTTP (http.client and sockets), for what
tritonclient never sends: no Content-Type, nested vs flat data,
binary_data_output, chunked bodies, hand-built binary bodies."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import struct
import subprocess

import numpy as np
import pytest

import oiphelpers as h

X = [[1.0, 2.0, 3.0, 4.0], [-1.5, 0.0, 2.25, 100.0]]


def scale_input(data=X, shape=(2, 4)):
    return {"name": "x", "shape": list(shape), "datatype": "FP32", "data": data}


def test_json_without_content_type(server):
    status, headers, body = server.request("POST", "/v2/models/scale/versions/2/infer",
                                           h.json_body([scale_input()]))
    assert status == 200, body
    doc = json.loads(body)
    assert doc["model_name"] == "scale" and doc["model_version"] == "2"
    (y,) = doc["outputs"]
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [2, 4]
    assert y["data"] == [v * 2 for row in X for v in row]


def test_nested_and_flat_data_agree(server):
    answers = []
    for data in (X, [v for row in X for v in row], [[[1.0, 2.0], [3.0, 4.0]], [[-1.5, 0.0], [2.25, 100.0]]]):
        status, _, body = server.request("POST", "/v2/models/scale/versions/3/infer",
                                         h.json_body([scale_input(data)]),
                                         {"Content-Type": "application/json"})
        assert status == 200, body
        answers.append(json.loads(body)["outputs"][0]["data"])
    assert answers[0] == answers[1] == answers[2] == [v * 3 for row in X for v in row]


def test_pure_json_response_when_no_binary_requested(server):
    status, headers, body = server.request("POST", "/v2/models/add_sub/infer", h.json_body([
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]))
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    assert "inference-header-content-length" not in headers
    doc = json.loads(body)  # the whole body is JSON
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["OUTPUT0"]["data"] == [i + 1 for i in range(16)]
    assert outs["OUTPUT1"]["data"] == [i - 1 for i in range(16)]
    assert all("binary_data_size" not in o.get("parameters", {}) for o in doc["outputs"])
    assert headers.get("sluice-model-version") == "1"


def _check_binary_response(headers, body):
    assert headers["content-type"] == "application/octet-stream"
    assert "inference-header-content-length" in headers
    n = int(headers["inference-header-content-length"])
    assert 0 < n <= len(body)
    assert int(headers["content-length"]) == len(body)
    head = json.loads(body[:n])
    blobs, offset = {}, n
    for o in head["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is not None:
            assert "data" not in o
            blobs[o["name"]] = body[offset:offset + size]
            offset += size
    assert offset == len(body), "binary sections must fill the body exactly"
    return head, blobs


def test_binary_data_output_parameter(server):
    """Request-level binary_data_output: every output in binary."""
    body = json.dumps({
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16}]})
    status, headers, data = server.request("POST", "/v2/models/add_sub/infer", body,
                                           {"Content-Type": "application/json"})
    assert status == 200, data
    head, blobs = _check_binary_response(headers, data)
    assert set(blobs) == {"OUTPUT0", "OUTPUT1"}
    assert np.frombuffer(blobs["OUTPUT0"], "<i4").tolist() == [i + 2 for i in range(16)]
    assert np.frombuffer(blobs["OUTPUT1"], "<i4").tolist() == [i - 2 for i in range(16)]


def test_binary_data_output_with_per_output_override(server):
    body = json.dumps({
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}, {"name": "OUTPUT1"}]})
    status, headers, data = server.request("POST", "/v2/models/add_sub/infer", body)
    assert status == 200, data
    head, blobs = _check_binary_response(headers, data)
    outs = {o["name"]: o for o in head["outputs"]}
    assert outs["OUTPUT0"]["data"] == [i + 2 for i in range(16)]
    assert set(blobs) == {"OUTPUT1"}
    assert np.frombuffer(blobs["OUTPUT1"], "<i4").tolist() == [i - 2 for i in range(16)]


def test_hand_built_binary_request(server):
    """Two binary inputs back to back, in the order of the tensors."""
    a = np.arange(32, dtype="<i4")
    b = np.arange(32, dtype="<i4")[::-1].copy()
    body, headers = h.binary_body({
        "id": "bin-1",
        "inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "INT32",
                    "parameters": {"binary_data_size": a.nbytes}},
                   {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32",
                    "parameters": {"binary_data_size": b.nbytes}}],
        "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": True}}]}, a.tobytes(), b.tobytes())
    status, rheaders, data = server.request("POST", "/v2/models/add_sub/infer", body, headers)
    assert status == 200, data
    head, blobs = _check_binary_response(rheaders, data)
    assert head["id"] == "bin-1"
    assert [o["name"] for o in head["outputs"]] == ["OUTPUT1"]
    assert np.frombuffer(blobs["OUTPUT1"], "<i4").tolist() == (a - b).tolist()


def test_binary_and_json_inputs_mixed(server):
    a = np.arange(16, dtype="<i4")
    body, headers = h.binary_body({
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [10] * 16},
                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32",
                    "parameters": {"binary_data_size": a.nbytes}}]}, a.tobytes())
    status, rheaders, data = server.request("POST", "/v2/models/add_sub/infer", body, headers)
    assert status == 200, data
    doc = json.loads(data)  # no binary output asked for: pure JSON
    assert "inference-header-content-length" not in rheaders
    outs = {o["name"]: o["data"] for o in doc["outputs"]}
    assert outs["OUTPUT0"] == [10 + i for i in range(16)]


def test_binary_bytes_input_hand_built(server):
    elements = [b"abc", b"", "ÿ€".encode()]
    blob = h.serialize_bytes_elements(elements)
    body, headers = h.binary_body({
        "inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, blob)
    status, rheaders, data = server.request("POST", "/v2/models/identity_bytes/infer", body, headers)
    assert status == 200, data
    head, blobs = _check_binary_response(rheaders, data)
    assert blobs["OUTPUT0"] == blob


def test_keep_alive_many_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for k in range(20):
            conn.request("POST", "/v2/models/scale/versions/1/infer",
                         h.json_body([scale_input([[k, k, k, k]], (1, 4))]))
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == 200
            assert doc["outputs"][0]["data"] == [float(k)] * 4
        # An error answer does not spoil the connection either.
        conn.request("POST", "/v2/models/scale/infer", b"{not json")
        resp = conn.getresponse()
        assert resp.status == 400
        resp.read()
        conn.request("GET", "/v2/health/ready")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    finally:
        conn.close()


def test_chunked_request_body(server):
    """A body without Content-Length (Transfer-Encoding: chunked) works."""
    payload = h.json_body([scale_input()])
    chunks = b"".join(f"{len(payload[i:i + 7]):x}\r\n".encode() + payload[i:i + 7] + b"\r\n"
                      for i in range(0, len(payload), 7))
    req = (b"POST /v2/models/scale/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n")
    status, headers, body = h.raw_exchange(server.port, req)
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [v for row in X for v in row]


def test_response_header_length_matches_for_utf8_ids(server):
    """Inference-Header-Content-Length counts bytes, not characters."""
    body = json.dumps({"id": "ïd-日本", "inputs": [scale_input()],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, ensure_ascii=False)
    status, headers, data = server.request("POST", "/v2/models/scale/versions/1/infer", body.encode())
    assert status == 200, data
    head, blobs = _check_binary_response(headers, data)
    assert head["id"] == "ïd-日本"
    assert struct.unpack("<8f", blobs["y"]) == tuple(v for row in X for v in row)


@pytest.mark.parametrize("path", ["/v2/models/scale", "/v2/models/scale/versions/1",
                                  "/v2/models/scale/config", "/v2/models/scale/stats",
                                  "/v2", "/v2/health/live"])
def test_get_endpoints_answer_json(server, path):
    status, headers, body = server.request("GET", path)
    assert status == 200, body
    if body:
        assert headers["content-type"].startswith("application/json")
        json.loads(body)


def test_expect_100_continue(server):
    """curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for
    the interim answer before sending the body."""
    payload = h.json_body([scale_input()])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/scale/versions/2/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                  + f"Content-Length: {len(payload)}\r\n\r\n".encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = s.recv(4096)
            assert chunk, interim
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100"), interim
        s.sendall(payload)
        status, headers, body = h.read_response(s)
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [v * 2 for row in X for v in row]


CURL = shutil.which("curl")


def curl_supports_http2():
    if not CURL:
        return False
    out = subprocess.run([CURL, "-V"], capture_output=True, text=True).stdout
    return "HTTP2" in out


@pytest.mark.skipif(not curl_supports_http2(), reason="needs curl with HTTP/2 (nghttp2)")
def test_http2_prior_knowledge(server):
    """The server speaks h2c on the same port (HTTP/2 without TLS)."""
    payload = json.dumps({"id": "h2", "inputs": [scale_input()]})
    out = subprocess.run(
        [CURL, "-s", "--http2-prior-knowledge", "--max-time", "20", "-H", "Content-Type: application/json",
         "-w", "\n%{http_version} %{http_code}", "--data-binary", payload,
         f"{server.url}/v2/models/scale/versions/3/infer"],
        capture_output=True, text=True, timeout=30)
    body, _, meta = out.stdout.rpartition("\n")
    assert meta == "2 200", (meta, body, out.stderr)
    doc = json.loads(body)
    assert doc["id"] == "h2" and doc["model_version"] == "3"
    assert doc["outputs"][0]["data"] == [v * 3 for row in X for v in row]
    out = subprocess.run([CURL, "-s", "--http2-prior-knowledge", "--max-time", "20", "-w", "\n%{http_version} %{http_code}",
                          "--data-binary", "{oops", f"{server.url}/v2/models/scale/infer"],
                         capture_output=True, text=True, timeout=30)
    body, _, meta = out.stdout.rpartition("\n")
    assert meta == "2 400", (meta, body)
    assert "JSON" in json.loads(body)["error"]
