"""The validation gate end to end: `require_validation = true` in
model.toml, reports made by the real `sluice models validate`, and a real
gateway that refuses unvalidated, failing or biased versions as stable or
canary, audits the refusals, and shows the verdicts in its inventory.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import numpy as np
import onnx

import oiphelpers as h
from conftest import Repo, logistic_model, write_csv

KEY = "gate-suite-admin-key-0123456789"


def admin(server, method, path, body=None):
    status, _, data = server.request(
        method, path, json.dumps(body).encode() if body is not None else None,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    return status, json.loads(data) if data else {}


def infer(server, rows):
    body = h.json_body([{"name": "x", "shape": [len(rows), 3], "datatype": "FP64",
                         "data": rows}])
    status, headers, data = server.request("POST", "/v2/models/credit/infer", body,
                                           {"Content-Type": "application/json"})
    return status, {k.lower(): v for k, v in headers.items()}, data


def test_the_gate_refuses_failing_and_biased_versions(tmp_path):
    rng = np.random.default_rng(42)
    n = 800
    x = rng.normal(size=(n, 2))
    group = rng.integers(0, 2, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ np.array([1.5, -1.5]))))).astype(int)
    data = write_csv(tmp_path / "golden.csv",
                     {"x0": x[:, 0], "x1": x[:, 1], "group": group, "y": y})
    validation = {"features": ["x0", "x1", "group"],
                  "checks": ["accuracy >= 0.7", "demographic_parity_difference <= 0.1"]}
    repo = Repo(tmp_path)
    good = logistic_model([1.5, -1.5, 0.0], 0.0)
    biased = logistic_model([1.5, -1.5, 4.0], -2.0)   # its answer depends on the group
    poor = logistic_model([-1.5, 1.5, 0.0], 0.0)      # wrong way round: accuracy far below 0.7
    for version, model in [(1, good), (2, biased), (3, poor), (4, good)]:
        repo.add("credit", model, version, "classification", validation,
                 extra="require_validation = true")

    def validate(version):
        r, report = repo.validate("credit", version, data, groups=["group"])
        return r.returncode, {c["check"]: c["passed"] for c in report["checks"]}

    assert validate(1) == (0, {"accuracy >= 0.7": True, "demographic_parity_difference <= 0.1": True})
    code, checks = validate(2)
    assert code == 1 and checks["demographic_parity_difference <= 0.1"] is False, checks
    code, checks = validate(3)
    assert code == 1 and checks["accuracy >= 0.7"] is False, checks
    # Version 4 is not validated at all.

    keys = tmp_path / "admin.keys"
    keys.write_text(f"auditor:{KEY}\n")
    server = h.start_server(repo.models, tmp_path / "logs",
                            extra_args=["--admin-keys-file", keys, "--no-collector"])
    try:
        # The default version is the highest one the gate lets through: 1.
        status, headers, body = infer(server, [[0.1, 0.2, 1.0]])
        assert status == 200, body
        assert headers["sluice-model-version"] == "1"

        for version, why in [(2, "demographic_parity_difference <= 0.1"),
                             (3, "accuracy >= 0.7"),
                             (4, "no validation report")]:
            status, answer = admin(server, "PUT", "/admin/models/credit/policy",
                                   {"stable": 1, "canary": {"version": version, "weight": 0.5}})
            assert status == 400, answer
            assert "validation gate" in answer["error"] and why in answer["error"], answer

        status, audit = admin(server, "GET", "/admin/audit?model=credit")
        assert status == 200
        refused = [r for r in audit["records"] if r["action"] == "policy.set.refused"]
        assert [r["after"]["canary"]["version"] for r in refused] == [2, 3, 4], audit
        assert all(r["actor"] == "auditor" and r["evidence"]["reason"] for r in refused)

        # Validated, version 4 may be canary; the change carries the reports'
        # hashes as evidence.
        code, _ = validate(4)
        assert code == 0
        def applied():
            status, answer = admin(server, "PUT", "/admin/models/credit/policy",
                                   {"stable": 1, "canary": {"version": 4, "weight": 0.5}})
            return answer if status == 200 else None
        wait_for(applied)
        status, audit = admin(server, "GET", "/admin/audit?model=credit")
        last = audit["records"][-1]
        assert last["action"] == "policy.set"
        report4 = (repo.version_dir("credit", 4) / "validation.json").read_bytes()
        assert last["evidence"]["validation"]["4"]["report_sha256"] == hashlib.sha256(report4).hexdigest()

        # The inventory: hashes, validation results, the gate's verdicts, roles.
        status, inventory = admin(server, "GET", "/admin/inventory")
        assert status == 200, inventory
        (credit,) = [m for m in inventory["models"] if m["model"] == "credit"]
        by_version = {v["version"]: v for v in credit["versions"]}
        assert by_version[1]["validation"]["passed"] is True
        assert by_version[2]["validation"]["passed"] is False
        assert by_version[2]["traffic"].startswith("refused")
        assert by_version[4]["roles"][0]["role"] == "canary"
        assert by_version[4]["roles"][0]["since"]["actor"] == "auditor"
        assert by_version[1]["sha256"] == json.loads(
            (repo.version_dir("credit", 1) / "manifest.json").read_text())["sha256"]
        listed = cli(["models", "inventory", "--url", server.url], KEY)
        assert "canary 50% since" in listed and "FAILED" in listed, listed
    finally:
        server.stop()


def wait_for(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("not within the time limit")


def cli(args, key):
    env = h.clean_env()
    env["SLUICE_ADMIN_KEY"] = key
    r = subprocess.run([str(h.require_binary()), *args], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_governance_facts_given_at_publish_are_in_the_inventory(tmp_path):
    models = tmp_path / "models"
    src = tmp_path / "credit.onnx"
    onnx.save(logistic_model([1.0, -1.0, 0.0], 0.0), src)
    data = tmp_path / "train.csv"
    data.write_text("x0,x1,group,y\n0.1,0.2,1,0\n")
    models.mkdir()
    r = subprocess.run([str(h.require_binary()), "models", "publish", "credit", str(src),
                        "--models", str(models), "--owner", "risk-team",
                        "--intended-use", "pre-screening; not for final decisions",
                        "--risk-tier", "high", "--code-revision", "4e1f0c2",
                        "--training-data", str(data)],
                       capture_output=True, text=True, timeout=60, env=h.clean_env())
    assert r.returncode == 0, r.stderr
    keys = tmp_path / "admin.keys"
    keys.write_text(f"auditor:{KEY}\n")
    server = h.start_server(models, tmp_path / "logs",
                            extra_args=["--admin-keys-file", keys, "--no-collector"])
    try:
        status, inventory = admin(server, "GET", "/admin/inventory")
        assert status == 200, inventory
        (version,) = inventory["models"][0]["versions"]
        assert version["lineage"] == {
            "owner": "risk-team",
            "intended_use": "pre-screening; not for final decisions",
            "risk_tier": "high",
            "code_revision": "4e1f0c2",
            "training_data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        }, version
        assert version["roles"] == [{"role": "stable", "share": 1.0, "implicit": True,
                                     "since": None}], version
    finally:
        server.stop()
