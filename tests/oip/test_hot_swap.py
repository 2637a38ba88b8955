"""Hot swap under load: versions appear and disappear while client threads
infer continuously, and no request fails or is answered by the wrong
version. Every request goes to 127.0.0.1 only; loops are bounded in count
and time."""

from __future__ import annotations

import collections
import http.client
import json
import shutil
import threading
import time

import pytest

import generate  # models/generate.py (oiphelpers puts models/ on sys.path)
import oiphelpers as h

X = [[1.0, 2.0, 3.0, 4.0]]
BODY = h.json_body([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}])
WAIT_FOR_VERSION_S = 15.0
HARD_LIMIT_S = 120.0

def publish(server, model, src, version):
    """`sluice models publish MODEL FILE --version N --models DIR`, as a user
    would publish a new version next to a running server."""
    done = h.publish_cli(server.models_dir, model, src, version)
    assert done.returncode == 0, (
        f"sluice models publish failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    assert f"version {version}" in done.stdout, done.stdout


class Load:
    """`threads` clients, each on its own keep-alive connection, POSTing
    x = [[1, 2, 3, 4]] to `scale` (no version) until stopped."""

    def __init__(self, port, threads=8, path="/v2/models/scale/infer"):
        self.port, self.path = port, path
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.requests = 0
        self.per_version = collections.Counter()
        self.failures = []      # (what, detail)
        self.wrong = []         # (version, y)
        self.started = time.monotonic()
        self.deadline = self.started + HARD_LIMIT_S
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        conn = None
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", self.path, BODY, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.requests += 1
                    self.failures.append(("exception", repr(e)))
                if conn is not None:
                    conn.close()
                conn = None
                continue
            with self.lock:
                self.requests += 1
                if resp.status != 200:
                    self.failures.append((resp.status, data[:300]))
                    continue
                try:
                    doc = json.loads(data)
                    version = doc["model_version"]
                    y = doc["outputs"][0]["data"]
                    header_version = resp.getheader("sluice-model-version")
                except (ValueError, KeyError, IndexError) as e:
                    self.failures.append(("bad body", repr(e), data[:300]))
                    continue
                self.per_version[version] += 1
                k = int(version)
                if y != [v * k for v in X[0]] or header_version != version:
                    self.wrong.append((version, header_version, y))
        if conn is not None:
            conn.close()

    def seen(self, version) -> bool:
        with self.lock:
            return self.per_version[str(version)] > 0

    def wait_for_version(self, version, timeout=WAIT_FOR_VERSION_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen(version):
                return True
            with self.lock:
                if self.failures:
                    return False
            time.sleep(0.02)
        return False

    def count(self):
        with self.lock:
            return self.requests

    def run_for(self, seconds):
        """Lets the load run for `seconds` more (and at least a few requests)."""
        start = self.count()
        deadline = time.monotonic() + max(seconds, 0)
        while time.monotonic() < deadline or self.count() < start + 20:
            if time.monotonic() > deadline + 10:
                break
            time.sleep(0.02)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=35)
        self.elapsed = time.monotonic() - self.started

    def summary(self):
        return (f"requests={self.requests} failed={len(self.failures)} wrong={len(self.wrong)} "
                f"per_version={dict(sorted(self.per_version.items(), key=lambda kv: int(kv[0])))} "
                f"elapsed={getattr(self, 'elapsed', 0):.1f}s")

    def check(self):
        assert not self.failures, f"{len(self.failures)} failed requests, first: {self.failures[:5]}\n{self.summary()}"
        assert not self.wrong, f"{len(self.wrong)} answers not x*version, first: {self.wrong[:5]}\n{self.summary()}"


def versions_on_disk(models_dir, model="scale"):
    return sorted(int(p.name) for p in (models_dir / model).iterdir() if p.is_dir() and p.name.isdigit())


def index_rows(server, model="scale"):
    status, _, body = server.request("POST", "/v2/repository/index", b"")
    assert status == 200
    return {r["version"]: r for r in json.loads(body) if r["name"] == model}


def wait_for_index(server, version, state, timeout=WAIT_FOR_VERSION_S):
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = index_rows(server).get(str(version))
        if row is not None and row["state"] == state:
            return row
        time.sleep(0.05)
    pytest.fail(f"scale version {version} did not become {state} within {timeout}s; last row: {row}")


@pytest.mark.slow
def test_hot_swap_twenty_versions_under_load(make_server, tmp_path):
    server = make_server(only={"scale": ["1"]}, demo=False)
    load = Load(server.port, threads=8)
    published = [1]
    try:
        assert load.wait_for_version(1), load.summary()
        for n in range(2, 22):  # 20 new versions
            src = generate.write_scale_model(tmp_path / f"scale-k{n}.onnx", float(n))
            publish(server, "scale", src, n)
            published.append(n)
            assert load.wait_for_version(n), (
                f"no response named version {n} within {WAIT_FOR_VERSION_S}s (or a request failed)\n"
                f"{load.summary()}\nfailures: {load.failures[:5]}")
            # Keep at most the 2 newest versions on disk.
            for old in versions_on_disk(server.models_dir)[:-2]:
                shutil.rmtree(server.models_dir / "scale" / str(old))
            assert len(versions_on_disk(server.models_dir)) <= 2
        load.run_for(0.5)
    finally:
        load.stop()
    print(f"\nhot swap: {load.summary()}")
    load.check()
    for v in published:
        assert load.seen(v), f"version {v} never answered\n{load.summary()}"
    # The server's view agrees with the disk: only the last two are ready.
    rows = index_rows(server)
    ready = sorted(int(v) for v, r in rows.items() if r["state"] == "READY")
    assert ready == [20, 21], rows
    status, doc = h.infer_scale_raw(server.port, X)
    assert status == 200 and doc["model_version"] == "21", doc


def test_delete_newest_version_rolls_back_under_load(make_server):
    server = make_server(only={"scale": ["1", "2", "3"]}, demo=False)
    load = Load(server.port, threads=4)
    try:
        assert load.wait_for_version(3), load.summary()
        shutil.rmtree(server.models_dir / "scale" / "3")
        assert load.wait_for_version(2), f"version 2 never answered after removing 3\n{load.summary()}"
        shutil.rmtree(server.models_dir / "scale" / "2")
        assert load.wait_for_version(1), f"version 1 never answered after removing 2\n{load.summary()}"
        load.run_for(0.3)
    finally:
        load.stop()
    print(f"\nrollback: {load.summary()}")
    load.check()
    status, doc = h.infer_scale_raw(server.port, X, version=3)
    assert status == 404, doc


def test_corrupt_version_leaves_previous_serving(make_server, tmp_path):
    server = make_server(only={"scale": ["1"]}, demo=False)
    load = Load(server.port, threads=4)
    try:
        assert load.wait_for_version(1), load.summary()
        publish(server, "scale", h.CORRUPT_ONNX, 2)
        row = wait_for_index(server, 2, "UNAVAILABLE")
        assert row["reason"], row
        load.run_for(0.5)
        with load.lock:
            assert set(load.per_version) == {"1"}, load.summary()
        assert index_rows(server)["1"]["state"] == "READY"
        # The broken version is known but not ready: 503 with the reason.
        status, headers, body = server.request("POST", "/v2/models/scale/versions/2/infer", BODY)
        assert status == 503, body
        assert "2" in h.error_message(status, headers, body)
        c = server.client()
        assert c.is_model_ready("scale", "2") is False
        assert c.is_model_ready("scale", "1") is True
        assert c.is_model_ready("scale") is True
        c.close()
        # A good version after the bad one takes over.
        publish(server, "scale", generate.write_scale_model(tmp_path / "k3.onnx", 3.0), 3)
        assert load.wait_for_version(3), load.summary()
        load.run_for(0.3)
    finally:
        load.stop()
    print(f"\ncorrupt: {load.summary()}, reason: {row['reason']!r}")
    load.check()


def test_incompatible_signature_refused_old_keeps_serving(make_server):
    server = make_server(only={"scale": ["1"]}, demo=False)
    load = Load(server.port, threads=4)
    try:
        assert load.wait_for_version(1), load.summary()
        other = h.FIXTURE_MODELS / "scale_other_sig" / "1" / "model.onnx"
        publish(server, "scale", other, 2)
        row = wait_for_index(server, 2, "UNAVAILABLE")
        assert "signature" in row["reason"], row
        load.run_for(0.5)
        with load.lock:
            assert set(load.per_version) == {"1"}, load.summary()
        md = server.client().get_model_metadata("scale")
        assert md["versions"] == ["1"]
        assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    finally:
        load.stop()
    print(f"\nsignature: {load.summary()}, reason: {row['reason']!r}")
    load.check()
