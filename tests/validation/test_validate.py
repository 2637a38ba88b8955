"""`sluice models validate` end to end: its metrics against scikit-learn's
and the textbook fairness definitions (to 1e-9), thresholds and exit
codes, the comparison with the stable version, and the report's record in
the manifest.

Every dataset is drawn here from a seeded generator; every model is built
here with known weights.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, f1_score, log_loss, mean_absolute_error,
                             mean_squared_error, precision_score, r2_score, recall_score,
                             roc_auc_score)

from conftest import Repo, linear_model, logistic_model, predict, write_csv

TOL = 1e-9


def close(got, want, what=""):
    assert got is not None, f"{what}: missing"
    assert abs(got - want) <= TOL, f"{what}: {got!r} != {want!r}"


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path)


def binary_data(seed, n=700, f=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f))
    true_w = np.array([1.5, -2.0, 0.7][:f])
    p = 1 / (1 + np.exp(-(x @ true_w + 0.3)))
    y = (rng.random(n) < p).astype(int)
    g = rng.choice(["north", "south", "east"], size=n, p=[0.5, 0.3, 0.2])
    return x, y, g


def columns(x, y, extra=None):
    cols = {f"x{i}": x[:, i] for i in range(x.shape[1])}
    cols["y"] = y
    cols.update(extra or {})
    return cols


def textbook_fairness(y, pred, g, positive=1):
    """Selection rate, TPR and FPR per group straight from their
    definitions; demographic parity difference and ratio, equalized odds
    difference (max of the TPR and FPR spreads), worst and best accuracy."""
    sel, tpr, fpr, acc = {}, {}, {}, {}
    for v in np.unique(g):
        m = g == v
        yt, yp = y[m] == positive, pred[m] == positive
        sel[v] = yp.mean()
        if yt.any():
            tpr[v] = (yp & yt).sum() / yt.sum()
        if (~yt).any():
            fpr[v] = (yp & ~yt).sum() / (~yt).sum()
        acc[v] = (y[m] == pred[m]).mean()
    rates = list(sel.values())
    return {
        "selection": sel, "tpr": tpr, "fpr": fpr, "accuracy": acc,
        "demographic_parity_difference": max(rates) - min(rates),
        "demographic_parity_ratio": min(rates) / max(rates),
        "equalized_odds_difference": max(max(tpr.values()) - min(tpr.values()),
                                         max(fpr.values()) - min(fpr.values())),
        "worst_group_accuracy": min(acc.values()),
        "best_group_accuracy": max(acc.values()),
    }


def check_classification(metrics, y, probs, pred, positive=1, multiclass=False, what=""):
    k = probs.shape[1]
    if multiclass:
        avg = dict(average="macro", zero_division=0)
        close(metrics["precision"], precision_score(y, pred, **avg), f"{what} precision")
        close(metrics["recall"], recall_score(y, pred, **avg), f"{what} recall")
        close(metrics["f1"], f1_score(y, pred, **avg), f"{what} f1")
        close(metrics["roc_auc"], roc_auc_score(y, probs, multi_class="ovr", average="macro"),
              f"{what} roc_auc")
    else:
        b = dict(pos_label=positive, zero_division=0)
        close(metrics["precision"], precision_score(y, pred, **b), f"{what} precision")
        close(metrics["recall"], recall_score(y, pred, **b), f"{what} recall")
        close(metrics["f1"], f1_score(y, pred, **b), f"{what} f1")
        close(metrics["roc_auc"], roc_auc_score(y == positive, probs[:, positive]),
              f"{what} roc_auc")
    close(metrics["accuracy"], accuracy_score(y, pred), f"{what} accuracy")
    close(metrics["log_loss"], log_loss(y, probs, labels=list(range(k))), f"{what} log_loss")


def test_binary_sigmoid_metrics_groups_and_fairness_match(repo, tmp_path):
    x, y, g = binary_data(seed=11)
    model = logistic_model([1.2, -1.8, 0.5], 0.1)
    repo.add("credit", model, 1, "classification")
    data = write_csv(tmp_path / "golden.csv", columns(x, y, {"region": g}))
    r, report = repo.validate("credit", 1, data, groups=["region"])
    assert r.returncode == 0, r.stderr
    p1 = predict(model, x)[:, 0]
    probs = np.column_stack([1 - p1, p1])
    pred = probs.argmax(axis=1)
    assert report["task"] == "classification" and report["classes"] == 2
    assert report["data"]["rows"] == len(y)
    assert report["data"]["features"] == ["x0", "x1", "x2"]  # label and group left out
    check_classification(report["metrics"], y, probs, pred, what="overall")
    for v in np.unique(g):
        m = g == v
        group = report["per_group"]["region"][v]
        assert group["rows"] == int(m.sum())
        check_classification(group["metrics"], y[m], probs[m], pred[m], what=f"group {v}")
    want = textbook_fairness(y, pred, g)
    fair = report["fairness"]["region"]
    for key in ["demographic_parity_difference", "demographic_parity_ratio",
                "equalized_odds_difference", "worst_group_accuracy", "best_group_accuracy"]:
        close(fair[key], want[key], key)
    assert fair["worst_group"] == min(want["accuracy"], key=want["accuracy"].get)
    for v in np.unique(g):
        group = report["per_group"]["region"][v]
        close(group["selection_rate"], want["selection"][v], f"selection {v}")
        close(group["true_positive_rate"], want["tpr"][v], f"tpr {v}")
        close(group["false_positive_rate"], want["fpr"][v], f"fpr {v}")
    # Latency: every row at batch 1 (fewer than 1000), batches of 64.
    lat = report["latency"]
    assert lat["single"]["runs"] == len(y) and lat["single"]["batch_size"] == 1
    assert lat["batch"]["batch_size"] == 64 and lat["batch"]["runs"] == -(-len(y) // 64)
    assert 0 < lat["single"]["p50_ms"] <= lat["single"]["p90_ms"] <= lat["single"]["p99_ms"]
    # No other version: no comparison.
    assert report["stable"] is None and report["comparison"] == {}
    # The summary (without --json) is readable and says the same.
    r2, _ = repo.validate("credit", 1, data, groups=["region"], json_out=False)
    assert r2.returncode == 0, r2.stderr
    assert "PASSED" in r2.stdout and "demographic_parity_difference" in r2.stdout


def test_softmax_two_columns_with_positive_class_0(repo, tmp_path):
    x, y, _ = binary_data(seed=12, n=300)
    model = logistic_model([[0.4, -0.9], [1.1, 0.2], [-0.3, 0.3]], [0.05, -0.05], head="softmax")
    repo.add("churn", model, 1, "classification", {"positive_class": 0})
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, report = repo.validate("churn", 1, data)
    assert r.returncode == 0, r.stderr
    probs = predict(model, x)
    check_classification(report["metrics"], y, probs, probs.argmax(axis=1), positive=0)
    assert report["positive_class"] == 0


def test_multiclass_macro_and_ovr_auc(repo, tmp_path):
    rng = np.random.default_rng(13)
    n, f, k = 900, 4, 3
    x = rng.normal(size=(n, f))
    true_w = rng.normal(size=(f, k)) * 1.5
    logits = x @ true_w
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    g = rng.choice(["a", "b"], size=n)
    model = logistic_model(true_w * 0.8 + rng.normal(size=(f, k)) * 0.3, [0.1, 0.0, -0.1],
                           head="softmax")
    repo.add("species", model, 1, "classification",
             {"checks": ["accuracy >= 0.3", "equalized_odds_difference <= 1"]})
    data = write_csv(tmp_path / "golden.csv", columns(x, y, {"site": g}))
    r, report = repo.validate("species", 1, data, groups=["site"])
    assert r.returncode == 0, r.stderr
    probs = predict(model, x)
    pred = probs.argmax(axis=1)
    assert report["classes"] == 3
    check_classification(report["metrics"], y, probs, pred, multiclass=True)
    # Fairness rates are those of the positive class (1) against the rest.
    want = textbook_fairness(y, pred, g, positive=1)
    for key in ["demographic_parity_difference", "equalized_odds_difference"]:
        close(report["fairness"]["site"][key], want[key], key)
    assert [c["passed"] for c in report["checks"]] == [True, True]


def test_regression_metrics_match(repo, tmp_path):
    rng = np.random.default_rng(14)
    n = 500
    x = rng.normal(size=(n, 2))
    g = rng.choice(["young", "old"], size=n)
    y = x @ np.array([2.0, -1.0]) + 0.5 + rng.normal(scale=0.4, size=n) + (g == "old") * 0.3
    model = linear_model([1.9, -1.1], 0.55)
    repo.add("price", model, 1, "regression", {"checks": ["r2 >= 0.5", "rmse < 10"]})
    data = write_csv(tmp_path / "golden.csv", columns(x, y, {"age": g}))
    r, report = repo.validate("price", 1, data, groups=["age"])
    assert r.returncode == 0, r.stderr
    yhat = predict(model, x)[:, 0]
    m = report["metrics"]
    close(m["mae"], mean_absolute_error(y, yhat), "mae")
    close(m["rmse"], np.sqrt(mean_squared_error(y, yhat)), "rmse")
    close(m["r2"], r2_score(y, yhat), "r2")
    maes = {}
    for v in np.unique(g):
        sel = g == v
        gm = report["per_group"]["age"][v]["metrics"]
        close(gm["mae"], mean_absolute_error(y[sel], yhat[sel]), f"mae {v}")
        close(gm["rmse"], np.sqrt(mean_squared_error(y[sel], yhat[sel])), f"rmse {v}")
        close(gm["r2"], r2_score(y[sel], yhat[sel]), f"r2 {v}")
        maes[v] = mean_absolute_error(y[sel], yhat[sel])
    fair = report["fairness"]["age"]
    close(fair["worst_group_mae"], max(maes.values()), "worst group mae")
    close(fair["group_mae_difference"], max(maes.values()) - min(maes.values()), "mae spread")


def test_fp32_model_in_configured_batches(repo, tmp_path):
    x, y, _ = binary_data(seed=15, n=333)
    model = logistic_model([0.9, -1.4, 0.2], -0.2, dtype=np.float32)
    repo.add("fp32", model, 1, "classification", extra="max_batch_size = 50")
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, report = repo.validate("fp32", 1, data)
    assert r.returncode == 0, r.stderr
    assert report["latency"]["batch"]["batch_size"] == 50
    p1 = predict(model, x, batch=50)[:, 0]
    probs = np.column_stack([1 - p1, p1])
    check_classification(report["metrics"], y, probs, probs.argmax(axis=1))


def test_failing_threshold_exits_1_and_the_manifest_records_the_report(repo, tmp_path):
    x, y, _ = binary_data(seed=16, n=200)
    model = logistic_model([1.2, -1.8, 0.5], 0.1)
    vdir = repo.add("credit", model, 1, "classification",
                    {"checks": ["accuracy >= 0.99", "roc_auc > 0.5"]})
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, report = repo.validate("credit", 1, data)
    assert r.returncode == 1, r.stderr
    assert report["passed"] is False
    failing = [c for c in report["checks"] if not c["passed"]]
    assert [c["check"] for c in failing] == ["accuracy >= 0.99"]
    assert failing[0]["value"] == report["metrics"]["accuracy"]
    assert failing[0]["threshold"] == 0.99 and failing[0]["op"] == ">="
    # The report on disk is the one printed, and the manifest records its hash.
    raw = (vdir / "validation.json").read_bytes()
    assert json.loads(raw) == report
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["validation"] == {
        "file": "validation.json",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "passed": False,
        "created": report["created"],
    }
    assert report["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert report["model_file"]["sha256"] == manifest["sha256"]
    # The manifest still verifies: a server loads the version.
    assert manifest["sha256"] == hashlib.sha256((vdir / "model.onnx").read_bytes()).hexdigest()


def test_biased_model_fails_the_parity_gate_and_a_fair_one_passes(repo, tmp_path):
    rng = np.random.default_rng(17)
    n = 1000
    x = rng.normal(size=(n, 2))
    group = rng.integers(0, 2, size=n)  # also a feature, for the biased model
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0]))))).astype(int)
    checks = {"features": ["x0", "x1", "group"],
              "checks": ["demographic_parity_difference <= 0.1"]}
    data = write_csv(tmp_path / "golden.csv", columns(x, y, {"group": group}))
    fair = logistic_model([1.0, -1.0, 0.0], 0.0)
    biased = logistic_model([1.0, -1.0, 3.0], -1.5)  # group 1 pushed up, group 0 down
    repo.add("fair", fair, 1, "classification", checks)
    repo.add("biased", biased, 1, "classification", checks)
    r, report = repo.validate("fair", 1, data, groups=["group"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["checks"][0]["passed"] is True
    r, report = repo.validate("biased", 1, data, groups=["group"])
    assert r.returncode == 1, r.stderr
    check = report["checks"][0]
    assert check["passed"] is False and check["value"] > 0.1
    p = predict(biased, np.column_stack([x, group]))[:, 0]
    pred = (np.column_stack([1 - p, p])).argmax(axis=1)
    want = textbook_fairness(y, pred, group.astype(str))
    close(check["value"], want["demographic_parity_difference"], "biased DPD")


def test_comparison_with_stable(repo, tmp_path):
    x, y, _ = binary_data(seed=18, n=400)
    good = logistic_model([1.5, -2.0, 0.7], 0.3)
    worse = logistic_model([0.5, -0.5, 0.0], 0.0)
    checks = {"checks": ["accuracy_delta_vs_stable >= -0.01", "p99_latency_ratio_vs_stable <= 100"]}
    repo.add("m", good, 1, "classification", checks)
    repo.add("m", worse, 2, "classification", checks)
    repo.add("m", good, 3, "classification", checks)
    data = write_csv(tmp_path / "golden.csv", columns(x, y))

    def acc(model):
        return accuracy_score(y, (predict(model, x)[:, 0] > 0.5).astype(int))

    # No policy: compared with the highest other version (3).
    r, report = repo.validate("m", 2, data)
    assert r.returncode == 1, r.stderr
    assert report["stable"]["version"] == 3
    close(report["comparison"]["accuracy_delta_vs_stable"], acc(worse) - acc(good), "delta")
    for name in ["f1", "roc_auc", "log_loss", "precision", "recall"]:
        assert f"{name}_delta_vs_stable" in report["comparison"]
    ratio = report["comparison"]["p99_latency_ratio_vs_stable"]
    close(ratio, report["latency"]["single"]["p99_ms"] / report["stable"]["latency"]["single"]["p99_ms"],
          "p99 ratio")
    assert [c["passed"] for c in report["checks"]] == [False, True]
    # policy.toml's stable wins.
    (repo.models / "m" / "policy.toml").write_text("stable = 1\n")
    r, report = repo.validate("m", 3, data)
    assert r.returncode == 0, r.stderr
    assert report["stable"]["version"] == 1
    close(report["comparison"]["accuracy_delta_vs_stable"], 0.0, "same model")


def test_a_check_on_an_absent_comparison_fails_with_the_reason(repo, tmp_path):
    x, y, _ = binary_data(seed=19, n=100)
    repo.add("solo", logistic_model([1, -1, 0], 0), 1, "classification",
             {"checks": ["accuracy_delta_vs_stable >= -0.01", "demographic_parity_difference <= 0.1"]})
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, report = repo.validate("solo", 1, data)
    assert r.returncode == 1, r.stderr
    a, b = report["checks"]
    assert a["passed"] is False and a["value"] is None and "no other version" in a["reason"]
    assert b["passed"] is False and "--group" in b["reason"]


def test_errors_exit_2_and_write_nothing(repo, tmp_path):
    x, y, _ = binary_data(seed=20, n=50)
    vdir = repo.add("m", logistic_model([1, -1, 0], 0), 1, "classification",
                    {"checks": ["acuracy >= 0.9"]})
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, _ = repo.validate("m", 1, data)
    assert r.returncode == 2
    assert "unknown metric" in r.stderr and "accuracy" in r.stderr and "roc_auc" in r.stderr
    assert not (vdir / "validation.json").exists()
    # A missing label column, an unknown version.
    (repo.models / "m" / "model.toml").write_text('task = "classification"\n')
    r, _ = repo.validate("m", 1, data, label="target")
    assert r.returncode == 2 and "target" in r.stderr
    r, _ = repo.validate("m", 7, data)
    assert r.returncode == 2 and "version 7" in r.stderr
    # No task declared.
    (repo.models / "m" / "model.toml").write_text("")
    r, _ = repo.validate("m", 1, data)
    assert r.returncode == 2 and "task" in r.stderr
    assert not (vdir / "validation.json").exists()


def test_a_signed_manifest_is_refused_without_a_key(repo, tmp_path):
    x, y, _ = binary_data(seed=21, n=50)
    vdir = repo.add("m", logistic_model([1, -1, 0], 0), 1, "classification")
    (vdir / "manifest.sig").write_text("{}")
    before = (vdir / "manifest.json").read_bytes()
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, _ = repo.validate("m", 1, data)
    assert r.returncode == 2
    assert "signed" in r.stderr and "--sign" in r.stderr
    assert (vdir / "manifest.json").read_bytes() == before
    assert not (vdir / "validation.json").exists()


def test_sign_re_signs_the_manifest(repo, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signer.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    x, y, _ = binary_data(seed=22, n=50)
    vdir = repo.add("m", logistic_model([1, -1, 0], 0), 1, "classification")
    (vdir / "manifest.sig").write_text("{}")
    data = write_csv(tmp_path / "golden.csv", columns(x, y))
    r, report = repo.validate("m", 1, data, extra=["--sign", str(key_file)])
    assert r.returncode == 0, r.stderr
    assert (vdir / "manifest.sig").read_text() != "{}"
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["validation"]["sha256"] == hashlib.sha256(
        (vdir / "validation.json").read_bytes()).hexdigest()
