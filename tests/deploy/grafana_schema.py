"""Validates a Grafana dashboard JSON against Grafana's own schema, as the
Grafana Foundation SDK (`grafana-foundation-sdk`, Grafana Labs) types it.

The SDK's Python models are generated from Grafana's schema (its CUE kinds:
the dashboard, each panel plugin's options and field config, each data
source's query) for one Grafana version (11.6 here). Their `from_json` only
decodes, leniently: it ignores unknown keys and checks no types. So this module
walks the JSON alongside the decoded models and their type annotations and
reports, with a JSON path each:

* keys the schema does not define (a misspelt `gridpos`, an option the panel
  type does not have);
* required keys that are missing (`gridPos.w`, a target's `refId`, a
  variable's `name`);
* values of the wrong type or outside an enum (`"drawStyle": "bar"`,
  `"graphTooltip": "shared"`);
* targets whose data source type has no query schema (decoded as
  `UnknownDataquery`).

Panel options and `fieldConfig.defaults.custom` are checked against the
panel type's own schema (e.g. timeseries), targets against the data source's
(e.g. prometheus), as Grafana itself would.
"""

from __future__ import annotations

import enum
import functools
import types
import typing

from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dashboard_model

NoneType = type(None)
_SENTINEL = object()


def _is_model_class(tp) -> bool:
    return isinstance(tp, type) and callable(getattr(tp, "from_json", None)) and callable(
        getattr(tp, "to_json", None)
    )


@functools.cache
def _fields(cls) -> dict[str, tuple[str, typing.Any, bool]]:
    """JSON key -> (attribute, type hint, required) for a model class.

    The SDK writes each attribute under its JSON key in `to_json`, always when
    the attribute is required and only when not None otherwise; so the key of
    an attribute is where a sentinel put in it comes out."""
    hints = typing.get_type_hints(cls)
    out = {}
    for attr, hint in hints.items():
        blank = cls.__new__(cls)
        for other in hints:
            setattr(blank, other, None)
        setattr(blank, attr, _SENTINEL)
        keys = [k for k, v in blank.to_json().items() if v is _SENTINEL]
        if len(keys) != 1:
            raise AssertionError(f"cannot map {cls.__name__}.{attr} to a JSON key")
        out[keys[0]] = (attr, hint, not _optional(hint))
    return out


def _optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and NoneType in typing.get_args(hint)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _Validator:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def value(self, src, decoded, hint, path: str) -> None:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is typing.Any or hint is object:
            # A plugin-defined part (panel options, custom field config):
            # check it against the plugin's schema when the SDK has one.
            if _is_model_class(type(decoded)):
                self.model(src, decoded, type(decoded), path)
            return
        if origin in (typing.Union, types.UnionType):
            if src is None:
                if NoneType not in args:
                    self.errors.append(f"{path}: null where {_type_name(hint)} is required")
                return
            options = [a for a in args if a is not NoneType]
            tried = []
            for option in options:
                trial = _Validator()
                trial.value(src, decoded, option, path)
                if not trial.errors:
                    return
                tried.append((len(trial.errors), _type_name(option), trial.errors))
            # Report the errors of the closest alternative (a row panel's as
            # RowPanel, a visualisation's as Panel).
            _, name, errors = min(tried, key=lambda t: t[0])
            prefix = "" if len(options) == 1 else f"(as {name}) "
            self.errors.extend(prefix + e for e in errors)
            return
        if origin is typing.Literal:
            if src not in args:
                self.errors.append(f"{path}: {src!r} is not one of {list(args)}")
            return
        if origin is list:
            if not isinstance(src, list):
                self.errors.append(f"{path}: expected a list, got {type(src).__name__}")
                return
            items = decoded if isinstance(decoded, list) and len(decoded) == len(src) else [None] * len(src)
            for i, (s, d) in enumerate(zip(src, items)):
                self.value(s, d, args[0], f"{path}[{i}]")
            return
        if origin is dict:
            if not isinstance(src, dict):
                self.errors.append(f"{path}: expected an object, got {type(src).__name__}")
                return
            for k, v in src.items():
                d = decoded.get(k) if isinstance(decoded, dict) else None
                self.value(v, d, args[1], f"{path}.{k}")
            return
        if not isinstance(hint, type):
            raise AssertionError(f"{path}: unhandled type hint {hint!r}")
        if issubclass(hint, enum.Enum):
            try:
                hint(src)
            except (ValueError, TypeError):
                self.errors.append(f"{path}: {src!r} is not one of {[e.value for e in hint]}")
            return
        if hint is bool:
            ok = isinstance(src, bool)
        elif hint is int:
            ok = isinstance(src, int) and not isinstance(src, bool)
        elif hint is float:
            ok = isinstance(src, (int, float)) and not isinstance(src, bool)
        elif hint is str:
            ok = isinstance(src, str)
        elif issubclass(hint, cogvariants.Dataquery):
            if isinstance(decoded, cogruntime.UnknownDataquery) or not _is_model_class(type(decoded)):
                self.errors.append(
                    f"{path}: a query whose data source type has no schema (set the panel's"
                    f" datasource.type, e.g. prometheus)"
                )
                return
            self.model(src, decoded, type(decoded), path)
            return
        elif _is_model_class(hint):
            cls = type(decoded) if isinstance(decoded, hint) else hint
            self.model(src, decoded, cls, path)
            return
        else:
            ok = isinstance(src, hint)
        if not ok:
            self.errors.append(f"{path}: expected {_type_name(hint)}, got {src!r}")

    def model(self, src, decoded, cls, path: str) -> None:
        if not isinstance(src, dict):
            self.errors.append(f"{path}: expected an object ({cls.__name__}), got {src!r}")
            return
        if not isinstance(decoded, cls):
            try:
                decoded = cls.from_json(src)
            except Exception as e:  # a decode that fails is a schema violation
                self.errors.append(f"{path}: does not decode as {cls.__name__}: {e!r}")
                return
        fields = _fields(cls)
        for key, (attr, hint, required) in fields.items():
            if required and key not in src:
                self.errors.append(f"{path}: required key {key!r} ({cls.__name__}) is missing")
        for key, v in src.items():
            if key not in fields:
                self.errors.append(
                    f"{path}.{key}: not a field of {cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
                    f" (it has {sorted(fields)})"
                )
                continue
            attr, hint, _ = fields[key]
            self.value(v, getattr(decoded, attr, None), hint, f"{path}.{key}")


def validate_dashboard(data: dict) -> list[str]:
    """Every way `data` departs from Grafana's dashboard schema; [] if none."""
    register_default_plugins()
    v = _Validator()
    v.model(data, dashboard_model.Dashboard.from_json(data), dashboard_model.Dashboard, "$")
    return v.errors
