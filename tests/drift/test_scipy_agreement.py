"""Every statistic `sluice drift compare --json` reports, recomputed with
SciPy and NumPy on the same data.

Datasets are seeded NumPy samples at the sizes the brief names, from the
exact KS regime (both samples at most 10 000) to the asymptotic one, with
ties (values rounded to one decimal, or to whole halves), a shifted column,
a rescaled one and a categorical column with a category new in the current
window.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from conftest import close

SIZES = [(20, 30), (200, 300), (1000, 1500), (5000, 7000), (20000, 30000)]
REL = 1e-6       # KS, Wasserstein, chi-square (the brief's tolerance)
REL_JS = 1e-9    # Jensen-Shannon on the same counts
REL_EXACT = 1e-12


def dataset(n_ref: int, n_cur: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    colours = np.array(["red", "green", "blue", "grey"])

    def table(n: int, current: bool) -> dict:
        shift = 0.3 if current else 0.0
        scale = 1.3 if current else 1.0
        cats = rng.choice(colours[:3], size=n, p=[0.5, 0.3, 0.2])
        if current:
            # a category the reference never saw, and a slightly moved mix
            cats = np.where(rng.random(n) < 0.05, "violet", cats)
        return {
            "same": rng.normal(size=n),
            "shifted": rng.normal(shift, 1.0, size=n),
            "rescaled": rng.normal(0.0, scale, size=n),
            "ties": np.round(rng.normal(size=n), 1),
            "halves": np.round(rng.exponential(2.0, size=n) * 2) / 2,
            "colour": cats,
        }

    return table(n_ref, False), table(n_cur, True)


def psi_evidently(ref_counts, cur_counts) -> float:
    """PSI with Evidently's empty-bin rule, in NumPy."""
    def percents(c):
        p = np.asarray(c, dtype=float) / np.sum(c)
        nz = p[p != 0]
        fill = nz.min() / 1e6 if nz.min() <= 1e-4 else 1e-4
        return np.where(p == 0, fill, p)
    r, c = percents(ref_counts), percents(cur_counts)
    return float(np.sum((r - c) * np.log(r / c)))


def check_numeric(f: dict, ref: np.ndarray, cur: np.ndarray) -> None:
    name = f["feature"]
    a = f["all"]
    ks = stats.ks_2samp(ref, cur)
    assert close(a["ks_statistic"], ks.statistic, REL), (name, a["ks_statistic"], ks.statistic)
    assert close(a["ks_p_value"], ks.pvalue, REL, p_value=True), (name, a["ks_p_value"], ks.pvalue)
    w = stats.wasserstein_distance(ref, cur)
    assert close(a["wasserstein"], w, REL), (name, a["wasserstein"], w)
    assert close(a["wasserstein_normed"], w / max(np.std(ref), 0.001), REL), name
    # The bins: edges at the reference deciles (NumPy's linear quantiles,
    # duplicates removed), counts as searchsorted(..., 'right') gives them.
    edges = np.asarray(f["bins"]["edges"], dtype=float)
    want_edges = np.unique(np.quantile(ref, np.arange(1, 10) / 10))
    assert len(edges) == len(want_edges), (name, edges, want_edges)
    assert np.allclose(edges, want_edges, rtol=REL_EXACT, atol=0), (name, edges, want_edges)
    rc = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    cc = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    assert f["bins"]["reference"] == rc.tolist(), name
    assert f["bins"]["current"] == cc.tolist(), name
    js = jensenshannon(rc, cc)
    assert close(a["js"], js, REL_JS), (name, a["js"], js)
    assert close(a["psi"], psi_evidently(rc, cc), REL_JS), name
    assert f["n_reference"] == len(ref) and f["n_current"] == len(cur)


def check_categorical(f: dict, ref: np.ndarray, cur: np.ndarray) -> None:
    a = f["all"]
    rc, cc = Counter(ref.tolist()), Counter(cur.tolist())
    cats = sorted(set(rc) | set(cc))
    assert f["bins"]["categories"] == cats
    ref_counts = [rc[c] for c in cats]
    cur_counts = [cc[c] for c in cats]
    assert f["bins"]["reference"] == ref_counts
    assert f["bins"]["current"] == cur_counts
    chi = stats.chi2_contingency(np.array([ref_counts, cur_counts]), correction=False)
    assert close(a["chi_square"], chi.statistic, REL), (a["chi_square"], chi.statistic)
    assert close(a["chi_square_p_value"], chi.pvalue, REL, p_value=True), (a, chi.pvalue)
    assert a["chi_square_dof"] == chi.dof
    assert close(a["js"], jensenshannon(ref_counts, cur_counts), REL_JS)
    assert close(a["psi"], psi_evidently(ref_counts, cur_counts), REL_JS)


def check_benjamini_hochberg(results: list[dict]) -> None:
    tested = [f for f in results if f["p_value"] is not None]
    if not tested:
        return
    ps = np.array([f["p_value"] for f in tested])
    want = stats.false_discovery_control(ps, method="bh") if len(ps) > 1 else ps
    for f, w in zip(tested, want):
        assert close(f["adjusted_p_value"], w, REL_EXACT, p_value=True), (f["feature"], w)
        assert f["drifted"] == (f["adjusted_p_value"] < f["threshold"])


def check_all(results: list[dict], ref: dict, cur: dict) -> None:
    assert sorted(f["feature"] for f in results) == sorted(ref)
    for f in results:
        r, c = np.asarray(ref[f["feature"]]), np.asarray(cur[f["feature"]])
        if f["kind"] == "numeric":
            check_numeric(f, r.astype(float), c.astype(float))
        else:
            check_categorical(f, r, c)
    check_benjamini_hochberg(results)
    # Ranked: drifted first.
    flags = [f["drifted"] for f in results]
    assert flags == sorted(flags, reverse=True)


@pytest.mark.parametrize("n_ref,n_cur", SIZES)
@pytest.mark.parametrize("seed", [1, 2])
def test_every_statistic_agrees_with_scipy(drift_cli, n_ref, n_cur, seed):
    ref, cur = dataset(n_ref, n_cur, seed * 1000 + n_ref)
    results = drift_cli.compare_json(ref, cur, "--categorical", "colour")
    check_all(results, ref, cur)
    # The default methods: Evidently's, by reference size.
    by_name = {f["feature"]: f for f in results}
    small = n_ref <= 1000
    assert by_name["same"]["method"] == ("ks" if small else "wasserstein")
    assert by_name["colour"]["method"] == ("chi_square" if small else "jensen_shannon")
    # KS as the method everywhere: the KS p-values go through
    # Benjamini-Hochberg together with the chi-square ones.
    results = drift_cli.compare_json(ref, cur, "--categorical", "colour", "--method", "ks")
    assert {f["method"] for f in results if f["kind"] == "numeric"} == {"ks"}
    check_all(results, ref, cur)


@pytest.mark.parametrize("n_ref,n_cur", [(10000, 300), (10001, 300), (300, 10001), (10000, 10000)])
def test_ks_exact_and_asymptotic_regimes_match_scipy_auto(drift_cli, n_ref, n_cur):
    """SciPy's 'auto' is exact while both samples have at most 10 000
    values and asymptotic (kstwo at round(n m / (n + m))) beyond."""
    rng = np.random.default_rng(n_ref + n_cur)
    ref = {"x": rng.normal(size=n_ref), "y": rng.normal(0.1, size=n_ref)}
    cur = {"x": rng.normal(size=n_cur), "y": rng.normal(size=n_cur)}
    results = drift_cli.compare_json(ref, cur, "--method", "ks")
    check_all(results, ref, cur)


def test_equal_sizes_with_a_tiny_statistic_fall_back_like_scipy(drift_cli):
    """For equal sizes SciPy's exact series can round above 1 when D is a
    few steps of 1/n; SciPy then uses the asymptotic distribution at
    D = h/n. So must we."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=10000)
    moved = base.copy()
    moved[:3] += 10.0           # D = 3/10000
    ties = np.round(base, 0)    # same values, permuted: D = 0
    ref = {"tiny": base, "zero": ties}
    cur = {"tiny": moved, "zero": rng.permutation(ties)}
    # SciPy does take that fallback here.
    with pytest.warns(RuntimeWarning, match="Exact calculation unsuccessful"):
        stats.ks_2samp(base, moved)
    results = drift_cli.compare_json(ref, cur, "--method", "ks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_all(results, ref, cur)
    by_name = {f["feature"]: f for f in results}
    assert by_name["zero"]["all"]["ks_p_value"] == 1.0


def test_extreme_separation_p_values_agree_absolutely(drift_cli):
    rng = np.random.default_rng(3)
    ref = {"far": rng.normal(size=5000), "near": rng.normal(size=5000)}
    cur = {"far": rng.normal(50.0, size=7000), "near": rng.normal(0.05, size=7000)}
    results = drift_cli.compare_json(ref, cur, "--method", "ks")
    check_all(results, ref, cur)
    far = next(f for f in results if f["feature"] == "far")
    assert far["all"]["ks_statistic"] == 1.0 and far["all"]["ks_p_value"] < 1e-300
    assert results[0]["feature"] == "far"
