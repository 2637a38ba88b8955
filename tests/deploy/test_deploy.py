"""Checks of the deployment files in deploy/: the Prometheus rules and config,
their unit tests, and the Grafana dashboard.

* promtool checks the rule files and the config, and runs alerts_test.yml;
* every metric and label the rules and the dashboard use is in
  docs/specs/instrumentation.md, counters go through rate()/increase(), and
  histograms through their `_bucket`/`_sum`/`_count` series;
* the dashboard is valid by Grafana's schema (grafana_schema.py) and by a few
  rules of layout and templating;
* every expression parses and runs on a real Prometheus (on loopback, with
  no scrape targets), and every dashboard query finds data in synthetic series
  shaped like the spec's (synthetic.py, backfilled with promtool).

promtool and prometheus come from Debian's `prometheus` package, which
scripts/setup-prometheus.sh installs; without them those tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

import promspec
import synthetic
from grafana_schema import validate_dashboard

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
RECORDING = PROM_DIR / "recording.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sluice.json"

RULE_FILES = [p for p in (ALERTS, RECORDING) if p.exists()]

REQUIRED_ALERTS = {
    "SluiceHighErrorRate",
    "SluiceHighLatencyP99",
    "SluiceModelLoadFailures",
    "SluiceModelNotServing",
    "SluiceTraceSpansDropped",
    "SluiceShadowDisagreement",
    "SluiceShadowDropping",
    "SluiceCanaryRolledBack",
}
SEVERITIES = {"critical", "warning", "info"}

INSTALL_HINT = (
    "is not installed: scripts/setup-prometheus.sh installs it (Debian's `prometheus` "
    "package, which has both prometheus and promtool); the project's test script runs it first"
)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} {INSTALL_HINT}")
    return path


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


# --- Loading -------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> promspec.Spec:
    return promspec.load_spec()


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    out = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                out.append({**rule, "_file": path.name, "_group": group["name"]})
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def variable_names(dash: dict) -> set[str]:
    return {v["name"] for v in dash["templating"]["list"]}


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, expression) of every panel target, raw (with variables)."""
    out = []
    for p in all_panels(dash):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}", t.get("expr")))
    return out


def variable_queries(dash: dict) -> list[tuple[str, str]]:
    """(variable, label_values query) of every query variable."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append((v["name"], q["query"] if isinstance(q, dict) else q))
    return out


def all_exprs(rules, dash) -> list[tuple[str, str]]:
    """Every PromQL expression, ready to run: dashboard variables replaced as
    Grafana would ("All" -> .*, $__rate_interval -> 5m), and each variable
    query's selector."""
    names = variable_names(dash)
    out = [(f"{r['_file']}: {r.get('alert') or r.get('record')}", r["expr"]) for r in rules]
    out += [(where, promspec.substitute(e, names)) for where, e in dashboard_exprs(dash)]
    for name, query in variable_queries(dash):
        selector, _ = promspec.parse_label_values(query)
        if selector:
            out.append((f"variable {name}", promspec.substitute(selector, names)))
    return out


# --- promtool ------------------------------------------------------------------


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path):
    promtool = need("promtool")
    r = run([promtool, "check", "rules", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules():
    promtool = need("promtool")
    r = run([promtool, "test", "rules", ALERTS_TEST.name], cwd=PROM_DIR)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_promtool_check_config():
    promtool = need("promtool")
    r = run([promtool, "check", "config", str(PROM_CONFIG)])
    assert r.returncode == 0, r.stdout + r.stderr


# --- Rules ---------------------------------------------------------------------


def test_alerts_are_complete(rules):
    alerts = [r for r in rules if "alert" in r]
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [g["name"] for g in groups] == ["sluice"]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    missing = REQUIRED_ALERTS - set(names)
    assert not missing, f"alerts missing from alerts.yml: {sorted(missing)}"
    for a in alerts:
        assert "for" in a, f"{a['alert']}: no `for`"
        assert a.get("labels", {}).get("severity") in SEVERITIES, f"{a['alert']}: severity not one of {SEVERITIES}"
        ann = a.get("annotations", {})
        for key in ("summary", "description"):
            assert ann.get(key, "").strip(), f"{a['alert']}: no {key} annotation"


def test_every_alert_has_a_firing_and_a_quiet_unit_test(rules):
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert "alerts.yml" in [Path(f).name for f in tests["rule_files"]]
    fired, quiet = set(), set()
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert alerts <= fired, f"alerts never shown firing in alerts_test.yml: {sorted(alerts - fired)}"
    assert alerts <= quiet, f"alerts never shown quiet in alerts_test.yml: {sorted(alerts - quiet)}"


def test_rule_expressions_match_the_spec(rules, spec):
    problems = []
    for r in rules:
        f = promspec.check_expr(r["expr"], spec)
        problems += [f"{r['_file']} {r.get('alert') or r.get('record')}: {p}" for p in f.problems]
    assert not problems, "\n".join(problems)


def test_example_config_scrapes_sluice_and_loads_the_rules():
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    loaded = {Path(f).name for f in cfg["rule_files"]}
    assert {p.name for p in RULE_FILES} <= loaded
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    # SluiceTargetDown selects up{job="sluice"}.
    assert "sluice" in jobs
    targets = [t for sc in jobs["sluice"]["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:8000"]


# --- Dashboard -----------------------------------------------------------------


def test_dashboard_is_valid_by_grafanas_schema(dashboard):
    errors = validate_dashboard(dashboard)
    assert not errors, "the dashboard departs from Grafana's schema:\n" + "\n".join(errors)


def test_dashboard_structure(dashboard):
    d = dashboard
    assert d["title"] and d["uid"]
    assert 8 <= len(d["uid"]) <= 40
    assert 36 <= d["schemaVersion"] <= 41, "schemaVersion of Grafana 10/11"
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids not unique: {ids}"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        where = f"panel {p['id']} {p.get('title')!r}"
        assert p.get("title"), f"{where}: no title"
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["y"] >= 0, where
        assert g["x"] + g["w"] <= 24, f"{where}: beyond the 24-column grid ({g})"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{where} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        targets = p.get("targets", [])
        assert targets, f"{where}: no targets"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{where}: refIds {refs}"
        for t in targets:
            assert t.get("expr", "").strip(), f"{where}: target {t.get('refId')} has no expr"
        for ds in [p.get("datasource")] + [t.get("datasource") for t in targets]:
            assert ds == {"type": "prometheus", "uid": "${datasource}"}, (
                f"{where}: datasource {ds!r}: use the ${{datasource}} variable"
            )


def test_dashboard_templating(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name, v in variables.items():
        assert v.get("type") and "query" in v, f"variable {name}: needs type and query"
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"
    queries = dict(variable_queries(dashboard))
    for name, metric in (("model", "sluice_requests_total"), ("version", "sluice_requests_total")):
        assert name in queries, f"no {name} variable"
        selector, label = promspec.parse_label_values(queries[name])
        assert label == name and selector.startswith(metric), queries[name]
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    # Every variable an expression uses is defined, and multi-valued ones
    # are matched with =~ (so that "All" and multiple selections work).
    names = variable_names(dashboard)
    misuse = []
    for where, expr in dashboard_exprs(dashboard) + variable_queries(dashboard):
        promspec.substitute(expr, names)  # raises on an undefined variable
        misuse += [f"{where}: {m}" for m in promspec.variable_misuse(expr, names)]
    assert not misuse, "\n".join(misuse)


def test_dashboard_expressions_match_the_spec(dashboard, spec):
    names = variable_names(dashboard)
    problems, used = [], set()
    for where, expr in dashboard_exprs(dashboard):
        f = promspec.check_expr(promspec.substitute(expr, names), spec)
        used |= f.metrics
        problems += [f"{where}: {p}" for p in f.problems]
    for name, query in variable_queries(dashboard):
        selector, label = promspec.parse_label_values(query)
        f = promspec.check_expr(promspec.substitute(selector, names), spec)
        problems += [f"variable {name}: {p}" for p in f.problems if "cumulative" not in p]
        for metric in f.metrics:
            if label not in spec.series.get(metric, frozenset()) | promspec.TARGET_LABELS:
                problems.append(f"variable {name}: {metric} has no label {label!r}")
    assert not problems, "\n".join(problems)
    # And the dashboard shows every metric the spec defines.
    shown = {m for m in spec.metrics if any(u == m or u.startswith(m + "_") for u in used)}
    missing = set(spec.metrics) - shown
    assert not missing, f"metrics in the spec that no dashboard panel shows: {sorted(missing)}"


# --- A real Prometheus ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Prometheus:
    def __init__(self, base: str, data_until: int):
        self.base = base
        # The time of the last synthetic sample.
        self.data_until = data_until

    def get(self, path: str, **params) -> tuple[int, dict]:
        status, body = http_get(f"{self.base}{path}?" + urllib.parse.urlencode(params, doseq=True))
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"status": f"HTTP {status}", "error": body[:200].decode(errors="replace")}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, spec):
    """A Prometheus without scrape targets on a free loopback port, its TSDB
    backfilled with 30 minutes of synthetic Sluice metrics."""
    binary = need("prometheus")
    promtool = need("promtool")
    tmp = tmp_path_factory.mktemp("prometheus")
    end = int(time.time()) // synthetic.STEP_S * synthetic.STEP_S - 60
    samples = tmp / "sluice.om"
    samples.write_text(synthetic.openmetrics(spec, end - 1800, end))
    r = run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(samples), str(tmp / "data")])
    assert r.returncode == 0, f"backfill failed:\n{r.stdout}{r.stderr}"
    config = tmp / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    log = tmp / "prometheus.log"
    for _attempt in range(3):
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if http_get(base + "/-/ready", timeout=1)[0] == 200:
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if ready:
            break
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    else:
        pytest.fail(f"prometheus did not become ready:\n{log.read_text()[-3000:]}")
    try:
        yield Prometheus(base, end)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_every_expression_runs_on_prometheus(prometheus, rules, dashboard):
    failures = []
    exprs = all_exprs(rules, dashboard)
    assert len(exprs) > 20
    for where, expr in exprs:
        status, answer = prometheus.get("/api/v1/query", query=expr)
        if status != 200 or answer.get("status") != "success":
            failures.append(f"{where}: {answer.get('error')}\n    {expr}")
    assert not failures, "expressions Prometheus rejects:\n" + "\n".join(failures)


def test_prometheus_check_catches_a_bad_expression(prometheus):
    """The check above is not vacuous: Prometheus does reject bad PromQL."""
    bad = 'sum by (model) (rate(sluice_requests_total{model=~".*"}[5m])'
    status, answer = prometheus.get("/api/v1/query", query=bad)
    assert status == 400 and answer["status"] == "error"


def test_every_dashboard_query_finds_data(prometheus, dashboard):
    """With series shaped like the spec's, every panel query and every
    variable returns something: no query selects a label value, a suffix or
    a combination that a real gateway's metrics would never match."""
    names = variable_names(dashboard)
    empty = []
    for where, expr in dashboard_exprs(dashboard):
        expr = promspec.substitute(expr, names)
        status, answer = prometheus.get("/api/v1/query", query=expr, time=prometheus.data_until)
        assert status == 200 and answer["status"] == "success", f"{where}: {answer}"
        values = [s["value"][1] for s in answer["data"]["result"]]
        if not values or all(v == "NaN" for v in values):
            empty.append(f"{where}: {answer['data']['result']}\n    {expr}")
    for name, query in variable_queries(dashboard):
        selector, label = promspec.parse_label_values(query)
        params = {"start": prometheus.data_until - 3600, "end": prometheus.data_until}
        if selector:
            params["match[]"] = promspec.substitute(selector, names)
        status, answer = prometheus.get(f"/api/v1/label/{label}/values", **params)
        assert status == 200 and answer["status"] == "success", f"variable {name}: {answer}"
        if not answer["data"]:
            empty.append(f"variable {name}: no values for {query}")
    assert not empty, "queries that find no data:\n" + "\n".join(empty)
