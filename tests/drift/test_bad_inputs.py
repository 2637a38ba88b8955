"""Bad input: a non-zero exit and a message that says what is wrong. Good
input exits 0 whether or not anything drifted."""

from __future__ import annotations

import json

from conftest import write_csv

GOOD = {"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, 0.25, 0.125, 1.0]}


def fails(drift_cli, argv: list[str], *needles: str) -> str:
    proc = drift_cli.run(argv)
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.lower()
    for n in needles:
        assert n.lower() in err, proc.stderr
    return proc.stderr


def test_missing_file(drift_cli, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    fails(drift_cli, ["drift", "compare", str(tmp_path / "nope.csv"), str(good)],
          "cannot read", "reference", "nope.csv")
    fails(drift_cli, ["drift", "compare", str(good), str(tmp_path / "gone.csv")],
          "cannot read", "current", "gone.csv")


def test_empty_file_and_header_only(drift_cli, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    fails(drift_cli, ["drift", "compare", str(empty), str(good)], "empty")
    header = tmp_path / "header.csv"
    header.write_text("a,b\n")
    fails(drift_cli, ["drift", "compare", str(good), str(header)], "no data rows")


def test_column_mismatch(drift_cli, tmp_path):
    ref = write_csv(tmp_path / "r.csv", GOOD)
    cur = write_csv(tmp_path / "c.csv", {"a": [1.0, 2.0], "z": [3.0, 4.0]})
    fails(drift_cli, ["drift", "compare", str(ref), str(cur)],
          "column mismatch", "only in reference: b", "only in current: z")
    # Restricting to the common columns works.
    proc = drift_cli.run(["drift", "compare", str(ref), str(cur), "--features", "a"])
    assert proc.returncode == 0, proc.stderr
    fails(drift_cli, ["drift", "compare", str(ref), str(cur), "--features", "a,b"],
          "--features", '"b"', "current")


def test_no_numeric_column(drift_cli, tmp_path):
    ref = write_csv(tmp_path / "r.csv", {"name": ["x", "y"], "city": ["p", "q"]})
    cur = write_csv(tmp_path / "c.csv", {"name": ["x", "x"], "city": ["q", "q"]})
    fails(drift_cli, ["drift", "compare", str(ref), str(cur)], "not numeric", "--categorical")
    # Declared categorical, the same files compare fine.
    proc = drift_cli.run(["drift", "compare", str(ref), str(cur), "--categorical", "name,city"])
    assert proc.returncode == 0, proc.stderr
    # A numeric column with nothing in it is nothing to compare either.
    ref = write_csv(tmp_path / "r2.csv", {"a": ["", "NA"]})
    cur = write_csv(tmp_path / "c2.csv", {"a": ["1", "2"]})
    fails(drift_cli, ["drift", "compare", str(ref), str(cur)], "no numeric column")


def test_malformed_csv(drift_cli, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    fails(drift_cli, ["drift", "compare", str(ragged), str(good)], "row 2", "fields")
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('a,b\n1,"2\n')
    fails(drift_cli, ["drift", "compare", str(good), str(unclosed)], "not closed")
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a\n1,2\n")
    fails(drift_cli, ["drift", "compare", str(dup), str(good)], "twice")


def test_bad_flags(drift_cli, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    fails(drift_cli, ["drift", "compare", str(good), str(good), "--method", "t-test"],
          "unknown drift method")
    fails(drift_cli, ["drift", "compare", str(good), str(good), "--categorical", "nope"],
          "--categorical", '"nope"')


def test_quoted_fields_missing_values_and_no_drift_exit_zero(drift_cli, tmp_path):
    ref = tmp_path / "r.csv"
    ref.write_text('x,"label"\r\n1.5,"a, ""b"""\r\n,c\r\nNaN,c\r\n2,"a, ""b"""\r\n')
    proc = drift_cli.run(["drift", "compare", str(ref), str(ref), "--json",
                          "--categorical", "label"])
    assert proc.returncode == 0, proc.stderr
    out = {f["feature"]: f for f in json.loads(proc.stdout)}
    assert out["x"]["n_reference"] == 2            # empty and NaN are missing
    assert out["label"]["bins"]["categories"] == ['a, "b"', "c"]
    assert not any(f["drifted"] for f in out.values())
    # A quote inside an unquoted field is an error, not a guess.
    bad = tmp_path / "bad.csv"
    bad.write_text('x\n1\n2"3\n')
    fails(drift_cli, ["drift", "compare", str(bad), str(bad)], "line 3", "quote")
