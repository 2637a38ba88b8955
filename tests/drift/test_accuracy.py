"""The decisions, not just the numbers: on features with no drift the
share flagged stays within what the significance level allows, and a
feature whose mean moved by half a standard deviation is flagged and ranked
first."""

from __future__ import annotations

import numpy as np

N_FEATURES = 50
REPETITIONS = 20


def null_tables(rng, n_ref: int, n_cur: int, k: int) -> tuple[dict, dict]:
    ref = {f"f{i:02d}": rng.normal(size=n_ref) for i in range(k)}
    cur = {f"f{i:02d}": rng.normal(size=n_cur) for i in range(k)}
    return ref, cur


def test_no_drift_flags_within_the_false_discovery_rate(drift_cli):
    """50 features drawn from one distribution, 20 times, KS with
    Benjamini-Hochberg at 0.05. Under the global null BH flags anything in
    a repetition with probability at most 0.05, so over 20 repetitions a
    handful of flags is the most one should see; the raw p-values, for
    their part, should fall below 0.05 about 5% of the time (exact KS is
    slightly conservative)."""
    rng = np.random.default_rng(20240601)
    flagged_per_rep = []
    raw = []
    for _ in range(REPETITIONS):
        ref, cur = null_tables(rng, 500, 400, N_FEATURES)
        results = drift_cli.compare_json(ref, cur)
        assert len(results) == N_FEATURES
        assert {f["method"] for f in results} == {"ks"}
        flagged_per_rep.append(sum(f["drifted"] for f in results))
        raw.extend(f["p_value"] for f in results)
    assert all(k <= N_FEATURES // 10 for k in flagged_per_rep), flagged_per_rep
    assert sum(flagged_per_rep) <= 10, flagged_per_rep
    share = np.mean(np.asarray(raw) < 0.05)
    assert 0.02 <= share <= 0.08, share


def test_no_drift_on_large_samples_with_wasserstein(drift_cli):
    """Above 1000 reference rows the default is the normed Wasserstein
    distance at 0.1: sampling noise at these sizes is far below it."""
    rng = np.random.default_rng(99)
    ref, cur = null_tables(rng, 5000, 3000, 20)
    results = drift_cli.compare_json(ref, cur)
    assert {f["method"] for f in results} == {"wasserstein"}
    assert not any(f["drifted"] for f in results)
    assert max(f["score"] for f in results) < 0.06


def test_half_sigma_shift_is_flagged_and_ranked_first(drift_cli):
    rng = np.random.default_rng(5)
    ref, cur = null_tables(rng, 1000, 1000, 20)
    ref["moved"] = rng.normal(10.0, 2.0, size=1000)
    cur["moved"] = rng.normal(11.0, 2.0, size=1000)   # +0.5 standard deviations
    results = drift_cli.compare_json(ref, cur)
    top = results[0]
    assert top["feature"] == "moved", [(f["feature"], f["adjusted_p_value"]) for f in results[:3]]
    assert top["method"] == "ks" and top["drifted"]
    assert top["adjusted_p_value"] < 1e-10
    assert sum(f["drifted"] for f in results) <= 2
    # The same with a large reference: Wasserstein normed, about 0.5.
    ref2, cur2 = null_tables(rng, 4000, 2000, 10)
    ref2["moved"] = rng.normal(size=4000)
    cur2["moved"] = rng.normal(0.5, size=2000)
    results = drift_cli.compare_json(ref2, cur2)
    assert results[0]["feature"] == "moved" and results[0]["drifted"]
    assert results[0]["method"] == "wasserstein"
    assert 0.4 < results[0]["score"] < 0.6
    assert sum(f["drifted"] for f in results) == 1


def test_categorical_shift_is_flagged(drift_cli):
    rng = np.random.default_rng(8)
    labels = np.array(["a", "b", "c", "d"])
    ref = {"same": rng.choice(labels, 800), "moved": rng.choice(labels, 800),
           "x": rng.normal(size=800)}
    cur = {"same": rng.choice(labels, 600),
           "moved": rng.choice(labels, 600, p=[0.4, 0.3, 0.2, 0.1]),
           "x": rng.normal(size=600)}
    results = drift_cli.compare_json(ref, cur, "--categorical", "same,moved")
    assert results[0]["feature"] == "moved" and results[0]["drifted"]
    assert results[0]["method"] == "chi_square"
    assert [f["feature"] for f in results if f["drifted"]] == ["moved"]


def test_table_output_lists_most_drifted_first(drift_cli):
    rng = np.random.default_rng(4)
    ref = {"calm": rng.normal(size=300), "moved": rng.normal(size=300)}
    cur = {"calm": rng.normal(size=300), "moved": rng.normal(1.0, size=300)}
    proc = drift_cli.compare(ref, cur)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["feature", "kind", "method", "score", "p-value", "adjusted", "p",
                                "threshold", "drifted"]
    assert lines[1].split()[0] == "moved" and lines[1].split()[-1] == "yes"
    assert lines[2].split()[0] == "calm" and lines[2].split()[-1] == "no"
    assert "1 of 2 features drifted" in proc.stdout
