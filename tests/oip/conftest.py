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


def pytest_terminal_summary(terminalreporter):
    if h.SUMMARY:
        terminalreporter.section("sluice under load")
        for line in h.SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A server over every fixture and demo model (read-only tests)."""
    root = tmp_path_factory.mktemp("session-repo")
    models = h.copy_models(root / "models")
    s = h.start_server(models, root / "logs")
    yield s
    code = s.stop()
    # Graceful shutdown on SIGTERM is part of the contract.
    assert code == 0, f"sluice exited with {code} on SIGTERM\n{s.stderr_tail()}"


@pytest.fixture
def client(server):
    c = server.client()
    yield c
    c.close()


@pytest.fixture
def make_server(tmp_path):
    """make_server(only={"scale": ["1"]}, extra_args=[...], demo=True) starts
    a server over a fresh repository in tmp_path; it is stopped at the end of
    the test."""
    started = []

    def make(only=None, extra_args=(), demo=True, name="repo"):
        models = h.copy_models(tmp_path / name / "models", only=only, demo=demo)
        s = h.start_server(models, tmp_path / name / "logs", extra_args=extra_args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
