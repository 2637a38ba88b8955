"""Malicious model files, built at test time with the `onnx` package, and a
real `sluice serve` over a repository holding, per case, a good version 1
and a bad version 2.

The servers are started by the OIP suite's helpers (`tests/oip/oiphelpers.py`,
imported by path, not copied).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oip"))

import oiphelpers as h  # noqa: E402

# Shared hooks: fail fast without the binary; servers' logs in failure reports.
from oiphelpers import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401

import malicious  # noqa: E402


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """{case: path of its bad model.onnx}, plus "good"."""
    root = tmp_path_factory.mktemp("built")
    files = {"good": malicious.write(malicious.good(), root / "good" / "model.onnx")}
    for name, case in malicious.CASES.items():
        files[name] = malicious.write(case.build(), root / name / "model.onnx")
    return files


@pytest.fixture(scope="session")
def server(tmp_path_factory, built):
    """One gateway; model `safety_<case>` has the good version 1 and the
    case's bad version 2. `safety_allowed` is the custom-domain case with
    `[safety] allowed_domains` naming its domain."""
    root = tmp_path_factory.mktemp("repo")
    models = root / "models"
    for name in malicious.CASES:
        h.stage_version(models, f"safety_{name}", built["good"], 1)
        h.stage_version(models, f"safety_{name}", built[name], 2)
    h.stage_version(models, "safety_allowed", built["good"], 1)
    h.stage_version(models, "safety_allowed", built["custom_domain"], 2)
    (models / "safety_allowed" / "model.toml").write_text(
        f'[safety]\nallowed_domains = ["{malicious.CUSTOM_DOMAIN}"]\n'
    )
    s = h.start_server(models, root / "logs")
    yield s
    code = s.stop()
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{s.stderr_tail()}"
