"""The `sluice` command line as a user runs it next to a live server:
`models publish`, `models list`, and shutdown on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

import generate  # models/generate.py
import oiphelpers as h


def run_cli(*args, timeout=30):
    return subprocess.run([str(h.require_binary()), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=h.clean_env())


def test_publish_cli(make_server, tmp_path):
    """`sluice models publish` adds a version with a manifest, the running
    server serves it (verified), and `models list` shows it."""
    server = make_server(only={"scale": ["1"]}, demo=False)
    src = generate.write_scale_model(tmp_path / "k2.onnx", 2.0)
    done = h.publish_cli(server.models_dir, "scale", src)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr[-2000:]}"
    assert "published scale version 2" in done.stdout, done.stdout
    manifest = json.loads((server.models_dir / "scale" / "2" / "manifest.json").read_text())
    assert isinstance(manifest, dict) and manifest
    assert not [p.name for p in (server.models_dir / "scale").iterdir() if p.name.startswith(".")]

    deadline = time.monotonic() + 15
    doc = None
    while time.monotonic() < deadline:
        status, doc = h.infer_scale_raw(server.port, [[1, 2, 3, 4]])
        assert status == 200, doc
        if doc["model_version"] == "2":
            break
        time.sleep(0.05)
    assert doc["model_version"] == "2", doc
    assert doc["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    status, _, body = server.request("POST", "/v2/repository/index", b"")
    rows = {r["version"]: r for r in json.loads(body) if r["name"] == "scale"}
    assert rows["2"]["state"] == "READY" and rows["2"].get("verified") is True, rows
    assert rows["1"].get("verified") is False, rows

    listed = run_cli("models", "list", "--models", server.models_dir)
    assert listed.returncode == 0, listed.stderr
    assert "scale" in listed.stdout
    assert "2  model.onnx, manifest" in listed.stdout, listed.stdout
    assert "1  model.onnx, no manifest" in listed.stdout, listed.stdout


def test_publish_cli_explicit_version_and_refusals(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    src = generate.write_scale_model(tmp_path / "k5.onnx", 5.0)
    done = h.publish_cli(repo, "scale", src, version=5)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-2000:]}"
    assert (repo / "scale" / "5" / "model.onnx").read_bytes() == src.read_bytes()
    again = h.publish_cli(repo, "scale", src, version=5)
    assert again.returncode == 1, (again.returncode, again.stderr[-2000:])
    assert "5" in again.stderr and "panicked" not in again.stderr
    missing = h.publish_cli(repo, "scale", tmp_path / "nope.onnx")
    assert missing.returncode == 1 and "panicked" not in missing.stderr, missing.stderr[-2000:]
    bad_name = h.publish_cli(repo, ".hidden", src)
    assert bad_name.returncode == 1 and "panicked" not in bad_name.stderr, bad_name.stderr[-2000:]


def test_sigterm_shuts_down_gracefully(make_server):
    server = make_server(only={"scale": ["1"]}, demo=False)
    status, doc = h.infer_scale_raw(server.port, [[1, 2, 3, 4]])
    assert status == 200
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("sluice did not exit within 15 s of SIGTERM")
    assert code == 0, f"exit code {code}\n{server.stderr_tail()}"
    with pytest.raises(OSError):
        h.http_request(server.port, "GET", "/v2/health/live", timeout=2)


def test_missing_model_directory_is_an_error(tmp_path):
    """Serving a repository that does not exist fails with a message, fast."""
    proc = subprocess.run([str(h.require_binary()), "serve", "--models", str(tmp_path / "absent"),
                           "--http-addr", "127.0.0.1:0"], capture_output=True, text=True, timeout=30,
                          env=h.clean_env(), cwd=h.REPO_ROOT)
    assert proc.returncode != 0
    assert "absent" in proc.stderr, proc.stderr[-2000:]
    assert "listening on" not in proc.stdout


def test_sigterm_under_load_answers_or_refuses_cleanly(make_server):
    """SIGTERM while clients are busy: the process exits 0 promptly; every
    request that got an answer got a complete, correct 200 (clients may see
    the connection closed or refused once it stops accepting)."""
    server = make_server(only={"scale": ["1", "2"]}, demo=False)
    load = h.Load(server.port, threads=4)
    try:
        assert load.wait_for_version(2), load.summary()
        load.run_for(0.3)
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("sluice did not exit within 15 s of SIGTERM under load")
    finally:
        load.stop()
    assert code == 0, f"exit code {code}\n{server.stderr_tail()}"
    answered_badly = [f for f in load.failures if f[0] != "exception"]
    assert not answered_badly, answered_badly[:5]
    assert not load.wrong, load.wrong[:5]
    h.report(f"sigterm under load: {load.summary()}, connection errors after SIGTERM: {len(load.failures)}")
