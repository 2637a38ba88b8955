"""Fixtures that run a real `sluice serve` on 127.0.0.1 for the OIP tests.

* `server`: one session-wide server over a copy of every fixture model and
  demo model, for tests that only read (and infer).
* `make_server`: a factory for function-scoped servers over a repository the
  test chooses (for tests that change the repository or need other flags);
  each is stopped when the test ends.

When a test fails, the tail of the stderr log of every server still running
is attached to its report.
"""

from __future__ import annotations

import pytest

import oiphelpers as h


# Shared hooks: fail fast without the binary; servers' logs in failure reports.
from oiphelpers import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401
# Shared fixtures: `server` (session-wide) and `make_server` (per test).
from oiphelpers import make_server, server  # noqa: E402,F401


def pytest_terminal_summary(terminalreporter):
    if h.SUMMARY:
        terminalreporter.section("sluice under load")
        for line in h.SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture
def client(server):
    c = server.client()
    yield c
    c.close()
