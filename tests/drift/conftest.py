"""Fixtures for the drift suite: the real `sluice drift compare`
(target/debug/sluice, or $SLUICE_BIN) run on CSV files written from seeded
NumPy data.

* `drift_cli` is a `DriftCli` bound to the test's tmp_path:
  `drift_cli.compare_json(reference, current, "--categorical", "c")` writes
  the two tables (dicts of column name -> values) as CSV, runs the binary
  with `--json` and returns the parsed array of per-feature results;
  `drift_cli.run(argv)` runs it on anything and returns the
  CompletedProcess.
* `close(got, want, rel)` is the comparison every agreement test uses:
  relative, except that two p-values both below 1e-300 are compared
  absolutely (there SciPy's own result is rounding noise).

When a test fails, its report gets the last command lines and their stderr.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SLUICE_BIN = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "debug" / "sluice"))
CLI_TIMEOUT_S = 300.0

CALLS: list[tuple[list[str], subprocess.CompletedProcess]] = []


def pytest_sessionstart(session):
    # Fail fast, with the fix, when the binary is missing or predates drift.
    if not SLUICE_BIN.is_file() or not os.access(SLUICE_BIN, os.X_OK):
        raise pytest.UsageError(f"the sluice binary {SLUICE_BIN} is missing: run "
                                f"`cargo build -p sluice-cli` in {REPO_ROOT} first")
    r = subprocess.run([str(SLUICE_BIN), "drift", "compare", "--help"], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise pytest.UsageError(f"`{SLUICE_BIN} drift compare --help` failed: this binary has "
                                f"no drift command; run `cargo build -p sluice-cli`\n{r.stderr}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and CALLS:
        lines = []
        for argv, proc in CALLS[-4:]:
            lines.append(f"$ {' '.join(argv)}\nexit {proc.returncode}\n{proc.stderr[-2000:]}")
        report.sections.append(("last sluice drift calls", "\n".join(lines)))


def csv_field(v) -> str:
    """A value as CSV text: floats in their shortest round-trip form, so the
    binary parses exactly the double NumPy holds; strings quoted when they
    need it."""
    if isinstance(v, str):
        if any(c in v for c in ',"\n\r') or v != v.strip():
            return '"' + v.replace('"', '""') + '"'
        return v
    f = float(v)
    if math.isnan(f):
        return ""
    return repr(f)


def write_csv(path: Path, columns: dict) -> Path:
    names = list(columns)
    cols = [list(columns[n]) for n in names]
    n = len(cols[0]) if cols else 0
    assert all(len(c) == n for c in cols), "columns of one table must have one length"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(csv_field(x) for x in names) + "\n")
        for i in range(n):
            f.write(",".join(csv_field(c[i]) for c in cols) + "\n")
    return path


def close(got, want, rel: float, *, p_value: bool = False) -> bool:
    """Relative agreement; p-values both below 1e-300 agree absolutely."""
    if got is None or want is None:
        return got is None and want is None
    got, want = float(got), float(want)
    if math.isnan(want):
        return math.isnan(got)
    if p_value and abs(want) < 1e-300 and abs(got) < 1e-300:
        return True
    if want == 0.0:
        return abs(got) <= 1e-300
    return abs(got - want) <= rel * abs(want)


class DriftCli:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.count = 0

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        full = [str(SLUICE_BIN), *argv]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                              env={**{k: v for k, v in os.environ.items()
                                      if not k.startswith("SLUICE_")}, "NO_COLOR": "1"})
        CALLS.append((full, proc))
        return proc

    def tables(self, reference: dict, current: dict) -> tuple[Path, Path]:
        self.count += 1
        r = write_csv(self.dir / f"reference-{self.count}.csv", reference)
        c = write_csv(self.dir / f"current-{self.count}.csv", current)
        return r, c

    def compare(self, reference: dict, current: dict, *args: str) -> subprocess.CompletedProcess:
        r, c = self.tables(reference, current)
        return self.run(["drift", "compare", str(r), str(c), *args])

    def compare_json(self, reference: dict, current: dict, *args: str) -> list[dict]:
        proc = self.compare(reference, current, "--json", *args)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert isinstance(out, list)
        return out


@pytest.fixture
def drift_cli(tmp_path) -> DriftCli:
    return DriftCli(tmp_path)
