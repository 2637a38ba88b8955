"""The model safety check: `sluice models check` by hand, and the gateway
refusing a bad version before ONNX Runtime sees it while the good version
keeps serving."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

import malicious
import oiphelpers as h

CASES = sorted(malicious.CASES)


def check_cli(path, *args):
    cmd = [str(h.require_binary()), "models", "check", str(path), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=h.clean_env())


def log_lines(server, model, version):
    """The server's log lines about one version."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", server.stderr_path.read_text(errors="replace"))
    return [
        line for line in text.splitlines()
        if re.search(rf"\bmodel={model}\b", line) and re.search(rf"\bversion={version}\b", line)
    ]


def wait_row(server, model, version, state, timeout=15.0):
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = h.index_rows(server, model).get(str(version))
        if row is not None and row["state"] == state:
            return row
        time.sleep(0.05)
    pytest.fail(f"{model} version {version} did not become {state}; last row: {row}\n{server.stderr_tail()}")


def infer(server, model):
    body = h.json_body([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}])
    status, headers, data = server.request("POST", f"/v2/models/{model}/infer", body,
                                           {"Content-Type": "application/json"})
    assert status == 200, data
    return json.loads(data)


def test_a_good_model_passes_with_a_summary(built):
    r = check_cli(built["good"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passes the safety check" in r.stdout
    assert "opsets [ai.onnx 21]" in r.stdout
    assert "1 nodes" in r.stdout and "1 initializers (4 bytes declared" in r.stdout


@pytest.mark.parametrize("case", CASES)
def test_check_refuses_with_the_reason(built, case):
    r = check_cli(built[case])
    assert r.returncode != 0, r.stdout
    assert malicious.CASES[case].reason in r.stdout, r.stdout
    assert "fails the safety check" in r.stderr


def test_the_demo_and_fixture_models_pass():
    files = sorted(h.DEMO_MODELS.glob("*/*/model.onnx")) + sorted(h.FIXTURE_MODELS.glob("*/*/model.onnx"))
    assert len(files) >= 20
    for f in files:
        r = check_cli(f)
        assert r.returncode == 0, f"{f}: {r.stdout}{r.stderr}"


def test_allowed_domains_lets_the_custom_domain_pass_the_check(built, tmp_path):
    config = tmp_path / "model.toml"
    config.write_text(f'[safety]\nallowed_domains = ["{malicious.CUSTOM_DOMAIN}"]\n')
    r = check_cli(built["custom_domain"], "--config", config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert malicious.CUSTOM_DOMAIN in r.stdout  # among the domains used

    # Limits from the config tighten the check too.
    config.write_text("[safety]\nmax_opset = 20\n")
    r = check_cli(built["good"], "--config", config)
    assert r.returncode != 0
    assert "ai.onnx opset 21, outside the supported range 7..=20" in r.stdout


@pytest.mark.parametrize("case", CASES)
def test_the_gateway_refuses_the_bad_version_and_keeps_serving(server, case):
    model = f"safety_{case}"
    bad = wait_row(server, model, 2, "UNAVAILABLE")
    assert bad["reason"].startswith("refused by the safety check: "), bad
    assert malicious.CASES[case].reason in bad["reason"], bad
    assert wait_row(server, model, 1, "READY")["reason"] == ""

    answer = infer(server, model)
    assert answer["model_version"] == "1"
    assert answer["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]

    # Version 2 never reached ONNX Runtime: the manager logs the refusal,
    # and its hand-off line (which version 1 has) is absent.
    lines = log_lines(server, model, 2)
    assert any("refused by the safety check; not handed to ONNX Runtime" in l for l in lines), lines
    assert not any("handing the model file to ONNX Runtime" in l for l in lines), lines
    assert any("handing the model file to ONNX Runtime" in l for l in log_lines(server, model, 1))


def test_an_allowed_domain_reaches_onnx_runtime_which_fails_differently(server):
    model = "safety_allowed"
    bad = wait_row(server, model, 2, "UNAVAILABLE")
    # Refused by ONNX Runtime, which has no such operator, not by the check.
    assert "safety check" not in bad["reason"], bad
    assert "ONNX Runtime could not load" in bad["reason"], bad
    assert f"{malicious.CUSTOM_DOMAIN}:Mul" in bad["reason"], bad
    lines = log_lines(server, model, 2)
    assert any("safety check passed; handing the model file to ONNX Runtime" in l for l in lines), lines
    assert infer(server, model)["model_version"] == "1"
