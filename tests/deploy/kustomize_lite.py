"""A small kustomize renderer for the subset deploy/k8s uses, so that the
tests need no kubectl or kustomize binary.

The subset, and what it does (the same as `kustomize build` does for it):

* `resources`: files of YAML documents, or directories holding a
  kustomization.yaml (rendered first, recursively), in order;
* `patches`: each `{path, target: {kind, name}}`, where the file is a JSON
  6902 patch (RFC 6902) written as a YAML list of operations; it is applied
  to the one resource of that kind and name among those rendered so far
  (bases and this kustomization's own resources). Operations: add, remove,
  replace, test (JSON pointers of RFC 6901, `-` to append to a list).

Anything else (another field of the kustomization, an inline patch, a
strategic-merge patch, a target by label, a name that matches no resource or
several, two resources of the same kind and name) raises KustomizeError,
so a kustomization that needs more than this subset fails the test instead
of being rendered wrongly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ALLOWED_FIELDS = {"apiVersion", "kind", "resources", "patches"}
KUSTOMIZATION_KIND = ("kustomize.config.k8s.io/v1beta1", "Kustomization")


class KustomizeError(Exception):
    pass


def render(directory: Path) -> list[dict]:
    """The objects `kustomize build DIRECTORY` would output (in resource
    order, not kustomize's kind order)."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(path.read_text()) or {}
    if (k.get("apiVersion"), k.get("kind")) != KUSTOMIZATION_KIND:
        raise KustomizeError(f"{path}: not a {KUSTOMIZATION_KIND}")
    unknown = set(k) - ALLOWED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields outside the supported subset: {sorted(unknown)}")

    objects: list[dict] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        elif target.is_file():
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
        else:
            raise KustomizeError(f"{path}: resource {entry} does not exist")
    seen = set()
    for o in objects:
        key = (o.get("kind"), o.get("metadata", {}).get("name"))
        if None in key:
            raise KustomizeError(f"{path}: an object without kind or metadata.name: {o}")
        if key in seen:
            raise KustomizeError(f"{path}: {key} appears twice")
        seen.add(key)

    for patch in k.get("patches", []):
        if set(patch) != {"path", "target"}:
            raise KustomizeError(f"{path}: a patch must be exactly {{path, target}}: {patch}")
        target = patch["target"]
        if set(target) != {"kind", "name"}:
            raise KustomizeError(f"{path}: a patch target must be exactly {{kind, name}}: {target}")
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise KustomizeError(f"{patch['path']}: not a JSON 6902 patch (a list of operations)")
        matches = [i for i, o in enumerate(objects)
                   if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if len(matches) != 1:
            raise KustomizeError(f"{path}: patch target {target} matches {len(matches)} objects")
        i = matches[0]
        try:
            objects[i] = apply_json_patch(objects[i], ops)
        except KustomizeError as e:
            raise KustomizeError(f"{directory / patch['path']}: {e}") from None
    return objects


# --- RFC 6902 / RFC 6901 ------------------------------------------------------------


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise KustomizeError(f"JSON pointer {pointer!r} does not start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list, token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise KustomizeError(f"{token!r} is not a list index")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise KustomizeError(f"list index {i} out of range (length {len(container)})")
    return i


def _parent(doc, tokens: list[str]):
    node = doc
    for t in tokens[:-1]:
        if isinstance(node, list):
            node = node[_index(node, t, allow_end=False)]
        elif isinstance(node, dict):
            if t not in node:
                raise KustomizeError(f"path segment {t!r} does not exist")
            node = node[t]
        else:
            raise KustomizeError(f"path goes through a scalar at {t!r}")
    return node


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, pointer = op.get("op"), op.get("path")
        if kind not in ("add", "remove", "replace", "test") or pointer is None:
            raise KustomizeError(f"unsupported operation {op}")
        tokens = _tokens(pointer)
        if not tokens:
            raise KustomizeError("operations on the whole document are not supported")
        parent, last = _parent(doc, tokens), tokens[-1]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise KustomizeError(f"{kind} without a value: {op}")
        if isinstance(parent, list):
            i = _index(parent, last, allow_end=(kind == "add"))
            if kind == "add":
                parent.insert(i, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[i]
            elif kind == "replace":
                parent[i] = copy.deepcopy(op["value"])
            elif parent[i] != op["value"]:
                raise KustomizeError(f"test failed at {pointer}: {parent[i]!r} != {op['value']!r}")
        elif isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise KustomizeError(f"{kind}: {pointer} does not exist")
            if kind in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            elif parent[last] != op["value"]:
                raise KustomizeError(f"test failed at {pointer}: {parent[last]!r} != {op['value']!r}")
        else:
            raise KustomizeError(f"{pointer}: the parent is a scalar")
    return doc
