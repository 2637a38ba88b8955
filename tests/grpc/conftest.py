"""Fixtures that run a real `sluice serve` on 127.0.0.1 for the gRPC tests.

The servers are started by the OIP suite's helpers (`tests/oip/oiphelpers.py`,
imported by path, not copied): gRPC is served on the HTTP port, so the same
server answers both protocols.

* `server`: one session-wide server over a copy of every fixture and demo
  model, for tests that only read (and infer).
* `client`: a `tritonclient.grpc` client of it.
* `make_server`: function-scoped servers over a repository the test
  chooses, stopped when the test ends.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oip"))

import oiphelpers as h  # noqa: E402


# Shared hooks: fail fast without the binary; servers' logs in failure reports.
from oiphelpers import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401
# Shared fixtures: `server` (session-wide) and `make_server` (per test).
from oiphelpers import make_server, server  # noqa: E402,F401


def grpc_client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.hostport)


@pytest.fixture
def client(server):
    c = grpc_client(server)
    yield c
    c.close()
