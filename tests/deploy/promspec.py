"""The metrics contract of docs/specs/instrumentation.md, and what PromQL
expressions use of it.

* `load_spec()` parses the spec's metrics table (name, type, labels) and its
  list of `outcome` values.
* `check_expr()` parses a PromQL expression with a real PromQL parser (the
  `promql-parser` package, Rust's promql-parser crate) and reports every
  metric that is not in the spec, every label matched or grouped on that the
  metric does not have, and every `outcome` value the spec does not list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser as pp

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "specs" / "instrumentation.md"

# Labels Prometheus attaches to every scraped series (the target's), which no
# exporter declares.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up": frozenset()}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass
class Metric:
    name: str
    type: str
    labels: frozenset[str]


@dataclass
class Spec:
    metrics: dict[str, Metric]
    outcomes: frozenset[str]
    # Every series name a query may select, with the labels it carries.
    series: dict[str, frozenset[str]] = field(default_factory=dict)
    # Whether each series is cumulative (a counter, a histogram's buckets, sum
    # and count: only meaningful through rate() or increase()) or a gauge.
    cumulative: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self):
        for m in self.metrics.values():
            if m.type == "histogram":
                self.series[m.name + "_bucket"] = m.labels | {"le"}
                self.series[m.name + "_sum"] = m.labels
                self.series[m.name + "_count"] = m.labels
                for suffix in HISTOGRAM_SUFFIXES:
                    self.cumulative[m.name + suffix] = True
            else:
                self.series[m.name] = m.labels
                self.cumulative[m.name] = m.type == "counter"
        for name, labels in SYNTHETIC.items():
            self.series.setdefault(name, labels)
            self.cumulative.setdefault(name, False)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]*)`", text)


def load_spec(path: Path = SPEC) -> Spec:
    text = path.read_text()
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, Metric] = {}
    header = None
    for line in section.splitlines():
        if not line.startswith("|"):
            if header is not None and metrics:
                break
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells))
        names = _ticked(row["name"])
        assert len(names) == 1, f"metrics table row without one `name`: {line!r}"
        metrics[names[0]] = Metric(names[0], row["type"].strip(), frozenset(_ticked(row["labels"])))
    assert header and {"name", "type", "labels"} <= set(header), "metrics table header not found"
    assert metrics, f"no metrics parsed from {path}"

    outcomes: set[str] = set()
    for line in section.splitlines():
        if line.lstrip("- ").startswith("`outcome`"):
            # The bullet and its continuation lines.
            start = section.index(line)
            bullet = section[start:].split("\n- ", 1)[0]
            outcomes |= {v for v in _ticked(bullet) if v != "outcome"}
    assert outcomes, "the spec lists no `outcome` values"
    return Spec(metrics, frozenset(outcomes))


# --- Expressions -------------------------------------------------------------

# Functions whose argument is a counter's range.
COUNTER_FUNCTIONS = frozenset({"rate", "increase", "irate", "resets"})

_IDENT_ALTERNATION = re.compile(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$")


@dataclass
class Findings:
    metrics: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _op(op) -> str:
    return {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}.get(str(op).rsplit(".", 1)[-1], str(op))


def _selector_name(vs) -> str | None:
    if vs.name:
        return vs.name
    for m in vs.matchers.matchers:
        if m.name == "__name__" and m.op == pp.MatchOp.Equal:
            return m.value
    return None


def check_expr(expr: str, spec: Spec) -> Findings:
    """Parses `expr` and lists the metrics it selects and every way it strays
    from the spec (an expression that does not parse is one)."""
    found = Findings()
    try:
        ast = pp.parse(expr)
    except ValueError as e:
        found.problems.append(f"does not parse: {e}")
        return found

    def selector(vs, fn: str | None, is_range: bool) -> frozenset[str] | None:
        name = _selector_name(vs)
        if name is None:
            found.problems.append(f"selector without a metric name: {vs}")
            return None
        found.metrics.add(name)
        if name not in spec.series:
            base = [m for m in spec.metrics.values() if m.type == "histogram" and m.name == name]
            if base:
                found.problems.append(
                    f"{name} is a histogram: select {name}_bucket, _sum or _count"
                )
            else:
                found.problems.append(f"metric {name} is not in docs/specs/instrumentation.md")
            return None  # labels unknown: grouping on it is not checked
        if spec.cumulative[name]:
            if not is_range or fn not in COUNTER_FUNCTIONS:
                found.problems.append(
                    f"{name} is cumulative (counter or histogram series): use it through"
                    f" rate() or increase(), not {fn + '()' if fn else 'its raw value'}"
                )
        elif is_range and fn in COUNTER_FUNCTIONS:
            found.problems.append(f"{name} is a gauge: {fn}() is for counters")
        labels = spec.series[name] | TARGET_LABELS
        matchers = list(vs.matchers.matchers)
        for group in getattr(vs.matchers, "or_matchers", []) or []:
            matchers += list(group)
        for m in matchers:
            if m.name == "__name__":
                continue
            if m.name not in labels:
                found.problems.append(f"{name} has no label {m.name!r} (matcher {m.name}{_op(m.op)}{m.value!r})")
            if m.name == "outcome":
                values = None
                if m.op in (pp.MatchOp.Equal, pp.MatchOp.NotEqual):
                    values = [m.value]
                elif _IDENT_ALTERNATION.match(m.value):
                    values = m.value.split("|")
                for v in values or []:
                    if v not in spec.outcomes:
                        found.problems.append(f"{name}: outcome {v!r} is not a value the spec lists")
        return labels

    def grouping(labels, available, what):
        if available is None:
            return
        for label in labels:
            if label not in available:
                found.problems.append(
                    f"{what} ({label}) groups on a label the selected series do not have"
                    f" (they have {sorted(available)})"
                )

    def walk(node, fn: str | None = None) -> frozenset[str] | None:
        """The labels `node`'s result carries; None for a scalar or string.
        `fn` is the function `node` is a direct argument of."""
        if isinstance(node, pp.VectorSelector):
            return selector(node, fn, False)
        if isinstance(node, pp.MatrixSelector):
            return selector(node.vector_selector, fn, True)
        if isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
            return walk(node.expr)
        if isinstance(node, (pp.NumberLiteral, pp.StringLiteral)):
            return None
        if isinstance(node, pp.Call):
            results = [walk(a, node.func.name) for a in node.args]
            vectors = [r for r in results if r is not None]
            out = frozenset().union(*vectors) if vectors else None
            fn = node.func.name
            if fn == "histogram_quantile" and out is not None:
                if "le" not in out:
                    found.problems.append(f"histogram_quantile over series without `le`: {node}")
                out = out - {"le"}
            elif fn in ("label_replace", "label_join") and out is not None:
                out = out | {node.args[1].val}
            return out
        if isinstance(node, pp.AggregateExpr):
            if node.param is not None:
                walk(node.param)
            inner = walk(node.expr)
            mod = node.modifier
            if mod is None:
                return frozenset()
            labels = list(mod.labels)
            grouping(labels, inner, f"{str(node.op).strip()} {str(mod.type).split('.')[-1].lower()}")
            if mod.type == pp.AggModifierType.By:
                return frozenset(labels)
            return (inner or frozenset()) - set(labels)
        if isinstance(node, pp.BinaryExpr):
            lhs, rhs = walk(node.lhs), walk(node.rhs)
            mod = node.modifier
            if mod is not None and mod.matching is not None and lhs is not None and rhs is not None:
                labels = list(mod.matching.labels)
                if mod.matching.type == pp.LabelModifierType.Include:
                    grouping(labels, lhs, "on, left side")
                    grouping(labels, rhs, "on, right side")
                else:
                    grouping(labels, lhs | rhs, "ignoring")
                group = list(getattr(mod, "group_labels", []) or [])
                if group:
                    one = rhs if mod.card == pp.VectorMatchCardinality.ManyToOne else lhs
                    grouping(group, one, "group_left/group_right")
            if lhs is None:
                return rhs
            if rhs is not None and str(node.op).strip() == "or":
                return lhs | rhs
            return lhs
        found.problems.append(f"unhandled PromQL node {type(node).__name__}: {node}")
        return None

    walk(ast)
    return found


# --- Grafana template variables ----------------------------------------------

# Grafana's built-in interval variables, replaced by a plausible value.
GRAFANA_INTERVALS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}


def substitute(expr: str, variables: set[str]) -> str:
    """Replaces Grafana variables the way a dashboard would: interval
    variables by a duration, template variables (used inside `=~"..."`) by
    `.*`, as "All" does. Raises ValueError on an unknown variable."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        if name in variables:
            return ".*"
        raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def variable_misuse(expr: str, variables: set[str]) -> list[str]:
    """Template variables that are multi-valued (or "All") must be matched
    with `=~`: `model="$model"` breaks as soon as two models are selected."""
    bad = []
    for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        label, op, value = m.groups()
        for name in re.findall(r"\$\{?(\w+)", value):
            if name in variables and (op != "=~" or value not in (f"${name}", f"${{{name}}}")):
                bad.append(f'{label}{op}"{value}": use {label}=~"${name}"')
    return bad


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<sel>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.S)


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` -> (selector, label)."""
    m = _LABEL_VALUES.match(query)
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group("sel"), m.group("label")
