#!/usr/bin/env python3
"""Generates Sluice's demo models and test-fixture models as small real ONNX files.

Everything is built with the ``onnx`` helper API (no training framework) from
fixed numpy seeds, and the output is byte-for-byte reproducible: running this
script twice writes identical files. Models use IR version 10 and opset 21 so
ONNX Runtime 1.31 loads them.

Usage (from the repository root, after ``scripts/setup-venv.sh``)::

    .venv/bin/python models/generate.py                  # regenerate everything
    .venv/bin/python models/generate.py check            # run every model in ONNX Runtime, compare with numpy
    .venv/bin/python models/generate.py scale --k 5 --out /tmp/scale.onnx
    .venv/bin/python models/generate.py identity --type FP32 --out /tmp/identity.onnx

Two trees are written, both in the Triton layout ``<root>/<model>/<version>/model.onnx``:

* ``models/``                 demo models: ``iris`` (versions 1 and 2), ``mixed``, ``text``, ``mlp``
* ``tests/fixtures/models/``  fixtures the project's tests use: ``identity_<dt>`` for every
                              datatype, ``add_sub``, ``fixed_shape``, ``scale`` (1, 2, 3),
                              ``scale_other_sig``, ``scale_slow``, ``scale_failing``; plus
                              ``tests/fixtures/corrupt.onnx``

The module is importable (tests add ``models/`` to ``sys.path``); the public helpers are
``write_scale_model(path, k)``, ``write_identity_model(path, dtype)`` (dtype: an OIP name such
as ``"FP32"``/``"BYTES"``, an ONNX name such as ``"FLOAT"``, or a ``TensorProto`` value),
``write_add_sub_model``, ``write_fixed_shape_model``, ``write_iris_model``,
``write_mixed_model``, ``write_text_model``, ``write_mlp_model``, ``generate_all`` and ``check_all``.

ONNX Runtime notes found while verifying: every op used here runs on the CPU provider
(Identity covers all 14 OIP datatypes including BF16 and STRING; Equal accepts strings).
StringNormalizer's default locale outside Windows is ``en_US.UTF-8``, and session creation
fails on hosts without it, so the ``text`` model names ``C.UTF-8`` explicitly; it also
refuses an empty batch (``[0]``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 21
PRODUCER = "sluice-models-generate"
TEXT_LOCALE = "C.UTF-8"

REPO = Path(__file__).resolve().parent.parent
DEMO_ROOT = REPO / "models"
FIXTURE_ROOT = REPO / "tests" / "fixtures" / "models"
CORRUPT_PATH = REPO / "tests" / "fixtures" / "corrupt.onnx"

# Open Inference Protocol datatype name -> ONNX tensor element type.
OIP_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
ONNX_TO_OIP = {v: k for k, v in OIP_TO_ONNX.items()}

# Fixture directory suffix (identity_<suffix>) for each datatype.
IDENTITY_SUFFIX = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "fp16",
    "BF16": "bf16",
    "FP32": "fp32",
    "FP64": "fp64",
    "BYTES": "bytes",
}

# Sample rows used in the README and by `check`.
IRIS_SAMPLE = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
IRIS_EXTRA_ROWS = np.array(
    [[5.9, 3.0, 4.2, 1.5], [6.3, 2.5, 5.0, 1.9], [5.7, 2.8, 4.5, 1.3], [4.9, 2.4, 3.3, 1.0]],
    dtype=np.float32,
)


# --------------------------------------------------------------------------- helpers


def onnx_type(t) -> int:
    """Accepts an ONNX element type (int) or a name: OIP (FP32, BYTES, ...) or ONNX (FLOAT, STRING, ...)."""
    if isinstance(t, int):
        return t
    name = str(t).upper()
    if name in OIP_TO_ONNX:
        return OIP_TO_ONNX[name]
    if name.startswith("TYPE_"):  # Triton config spelling
        return onnx_type(name[5:])
    try:
        return TensorProto.DataType.Value(name)
    except ValueError:
        raise ValueError(f"unknown datatype {t!r}") from None


def _io(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    """A graph input/output; a str in shape is a dynamic dim (dim_param), an int a fixed one."""
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def _model(graph: onnx.GraphProto, doc: str = "") -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
        ir_version=IR_VERSION,
    )
    if doc:
        model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _const_f32(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


# --------------------------------------------------------------------------- fixtures


def write_identity_model(path, dtype) -> Path:
    """INPUT0 [batch, n] -> Identity -> OUTPUT0 [batch, n], of the given datatype."""
    et = onnx_type(dtype)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        f"identity_{ONNX_TO_OIP.get(et, et)}",
        [_io("INPUT0", et, ["batch", "n"])],
        [_io("OUTPUT0", et, ["batch", "n"])],
    )
    return _save(_model(graph, f"OUTPUT0 = INPUT0 ({ONNX_TO_OIP.get(et, et)})"), path)


def write_scale_model(path, k: float, input_name: str = "x", output_name: str = "y", width: int = 4) -> Path:
    """x FP32 [batch, width] -> y FP32 [batch, width] = x * k."""
    graph = helper.make_graph(
        [helper.make_node("Mul", [input_name, "k"], [output_name])],
        "scale",
        [_io(input_name, TensorProto.FLOAT, ["batch", width])],
        [_io(output_name, TensorProto.FLOAT, ["batch", width])],
        initializer=[_const_f32("k", float(k))],
    )
    return _save(_model(graph, f"{output_name} = {input_name} * {float(k)!r}"), path)


def write_slow_scale_model(path, width: int = 256, depth: int = 1000) -> Path:
    """x FP32 [batch, 4] -> y FP32 [batch, 4] = x, the slow way: x is padded to
    `width` columns, multiplied `depth` times by the identity matrix and cut
    back to 4 columns. Same signature and answers as scale v1, but each row
    costs depth * width^2 multiply-adds (65 M by default: milliseconds):
    the slow shadow or canary of the rollout tests."""
    pad = np.zeros((4, width), dtype=np.float32)
    pad[:, :4] = np.eye(4, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "pad"], ["h0"])]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "cut"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "scale_slow",
        [_io("x", TensorProto.FLOAT, ["batch", 4])],
        [_io("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(pad, "pad"),
            numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye"),
            numpy_helper.from_array(pad.T.copy(), "cut"),
        ],
    )
    return _save(_model(graph, f"y = x, through {depth} {width}x{width} identity products"), path)


def write_failing_scale_model(path) -> Path:
    """x FP32 [batch, 4] -> y FP32 [batch, 4] = x, through a reshape to 3 rows:
    it fails in ONNX Runtime unless the batch is a multiple of 3. Signature-
    compatible with scale: the failing shadow or canary of the rollout tests
    (load it with `warmup_shapes = { x = [3, 4] }`)."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "three_rows"], ["t"]),
            helper.make_node("Reshape", ["t", "four_cols"], ["y"]),
        ],
        "scale_failing",
        [_io("x", TensorProto.FLOAT, ["batch", 4])],
        [_io("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "three_rows"),
            numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "four_cols"),
        ],
    )
    return _save(_model(graph, "y = x for batches of 3k rows; fails otherwise"), path)


def write_add_sub_model(path) -> Path:
    """Triton's `simple`: INPUT0, INPUT1 INT32 [batch, 16] -> OUTPUT0 = sum, OUTPUT1 = difference."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [_io("INPUT0", TensorProto.INT32, ["batch", 16]), _io("INPUT1", TensorProto.INT32, ["batch", 16])],
        [_io("OUTPUT0", TensorProto.INT32, ["batch", 16]), _io("OUTPUT1", TensorProto.INT32, ["batch", 16])],
    )
    return _save(_model(graph, "OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1"), path)


def write_fixed_shape_model(path) -> Path:
    """x FP32 [2, 3] (no dynamic dims) -> y FP32 [2, 3] = x * 3."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "fixed_shape",
        [_io("x", TensorProto.FLOAT, [2, 3])],
        [_io("y", TensorProto.FLOAT, [2, 3])],
        initializer=[_const_f32("k", 3.0)],
    )
    return _save(_model(graph, "y = x * 3, fixed shape [2, 3]"), path)


def write_pairs_model(path) -> Path:
    """x FP32 [-1] -> y FP32 [2, -1]: x reshaped into two rows. An odd length
    (such as the 1 a warm-up guesses for the dynamic dimension) fails in
    ONNX Runtime, so the model needs warm-up shapes from its model.toml."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, -1])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "pairs",
        [_io("x", TensorProto.FLOAT, ["n"])],
        [_io("y", TensorProto.FLOAT, [2, "half"])],
        initializer=[shape],
    )
    return _save(_model(graph, "x reshaped into two rows; odd lengths fail"), path)


def write_corrupt_file(path) -> Path:
    """Bytes that are not a loadable ONNX model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an ONNX model\n\xff\xfe\x00\x01garbage\x08\x96\x01\xde\xad\xbe\xef\n")
    return path


def generate_fixtures(root=FIXTURE_ROOT) -> list[Path]:
    root = Path(root)
    out = []
    for oip, suffix in IDENTITY_SUFFIX.items():
        out.append(write_identity_model(root / f"identity_{suffix}" / "1" / "model.onnx", oip))
    out.append(write_add_sub_model(root / "add_sub" / "1" / "model.onnx"))
    out.append(write_fixed_shape_model(root / "fixed_shape" / "1" / "model.onnx"))
    out.append(write_pairs_model(root / "pairs" / "1" / "model.onnx"))
    for version in (1, 2, 3):
        out.append(write_scale_model(root / "scale" / str(version) / "model.onnx", float(version)))
    out.append(
        write_scale_model(root / "scale_other_sig" / "1" / "model.onnx", 1.0, input_name="z", width=5)
    )
    out.append(write_slow_scale_model(root / "scale_slow" / "1" / "model.onnx"))
    out.append(write_failing_scale_model(root / "scale_failing" / "1" / "model.onnx"))
    out.append(write_corrupt_file(CORRUPT_PATH if root == FIXTURE_ROOT else root.parent / "corrupt.onnx"))
    return out


# --------------------------------------------------------------------------- demo: iris

# Per-class feature means and standard deviations of Fisher's iris data set
# (sepal length, sepal width, petal length, petal width), used to draw a
# synthetic iris-like training set.
_IRIS_MEANS = np.array(
    [[5.006, 3.428, 1.462, 0.246], [5.936, 2.770, 4.260, 1.326], [6.588, 2.974, 5.552, 2.026]]
)
_IRIS_STDS = np.array(
    [[0.352, 0.379, 0.174, 0.105], [0.516, 0.314, 0.470, 0.198], [0.636, 0.322, 0.552, 0.275]]
)
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def _iris_dataset(seed: int = 0, per_class: int = 50):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(3):
        xs.append(rng.normal(_IRIS_MEANS[c], _IRIS_STDS[c], size=(per_class, 4)))
        ys.append(np.full(per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def _fit_softmax_regression(x, y, features, steps=2000, lr=0.5, l2=1e-3):
    """Multinomial logistic regression by full-batch gradient descent on the chosen
    feature columns (the others get weight 0). Returns (W [4, 3], b [3]) in raw
    (unstandardized) feature units, rounded to 3 decimals so the committed model
    does not depend on the last bits of the host's floating point."""
    cols = list(features)
    xf = x[:, cols]
    mu, sd = xf.mean(axis=0), xf.std(axis=0)
    z = (xf - mu) / sd
    onehot = np.eye(3)[y]
    w = np.zeros((len(cols), 3))
    b = np.zeros(3)
    for _ in range(steps):
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(z)
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    # Fold the standardization into the weights: (x - mu) / sd @ w + b.
    w_raw = w / sd[:, None]
    b_raw = b - (mu / sd) @ w
    W = np.zeros((4, 3))
    W[cols] = w_raw
    return np.round(W, 3), np.round(b_raw, 3)


def iris_weights(version: int):
    """v1: fitted on all four features. v2: fitted on the sepal measurements only
    (petal weights are 0): a deliberately weaker model, so the two versions give
    different probabilities and disagree on some rows."""
    x, y = _iris_dataset(seed=0)
    if version == 1:
        return _fit_softmax_regression(x, y, features=[0, 1, 2, 3])
    if version == 2:
        return _fit_softmax_regression(x, y, features=[0, 1])
    raise ValueError(f"no iris version {version}")


def write_iris_model(path, version: int) -> Path:
    W, b = iris_weights(version)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "iris",
        [_io("input", TensorProto.FLOAT, ["batch", 4])],
        [_io("label", TensorProto.INT64, ["batch"]), _io("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[_const_f32("W", W), _const_f32("b", b)],
    )
    doc = (
        f"Iris classifier v{version} (softmax regression"
        + (", all four features" if version == 1 else ", sepal features only")
        + "). label: 0=setosa, 1=versicolor, 2=virginica."
    )
    return _save(_model(graph, doc), path)


# --------------------------------------------------------------------------- demo: mixed


def write_mixed_model(path) -> Path:
    """features FP32 [b,3], counts INT64 [b,2], mask BOOL [b,3] ->
    masked_sum FP32 [b], counts_total INT64 [b], any_masked BOOL [b], scaled FP64 [b,3]."""
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["features", "mask_f"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["masked_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["counts", "axis1"], ["counts_total"], keepdims=0),
        helper.make_node("Cast", ["mask"], ["mask_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["mask_i", "axis1"], ["mask_max"], keepdims=0),
        helper.make_node("Cast", ["mask_max"], ["any_masked"], to=TensorProto.BOOL),
        helper.make_node("Cast", ["features"], ["features_d"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["features_d", "two"], ["scaled"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            _io("features", TensorProto.FLOAT, ["batch", 3]),
            _io("counts", TensorProto.INT64, ["batch", 2]),
            _io("mask", TensorProto.BOOL, ["batch", 3]),
        ],
        [
            _io("masked_sum", TensorProto.FLOAT, ["batch"]),
            _io("counts_total", TensorProto.INT64, ["batch"]),
            _io("any_masked", TensorProto.BOOL, ["batch"]),
            _io("scaled", TensorProto.DOUBLE, ["batch", 3]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float64), "two"),
        ],
    )
    return _save(_model(graph, "Several inputs and outputs of different datatypes."), path)


# --------------------------------------------------------------------------- demo: text


def write_text_model(path) -> Path:
    """text STRING [b] -> lower STRING [b] (StringNormalizer LOWER), is_hello BOOL [b] (lower == "hello")."""
    graph = helper.make_graph(
        [
            # ONNX Runtime's default locale for StringNormalizer on Linux/macOS is
            # en_US.UTF-8, which many hosts and containers lack (session creation then
            # fails); C.UTF-8 is built into glibc >= 2.35 and still lower-cases
            # non-ASCII letters (the "C" locale would only do ASCII).
            helper.make_node(
                "StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale=TEXT_LOCALE
            ),
            helper.make_node("Equal", ["lower", "hello"], ["is_hello"]),
        ],
        "text",
        [_io("text", TensorProto.STRING, ["batch"])],
        [_io("lower", TensorProto.STRING, ["batch"]), _io("is_hello", TensorProto.BOOL, ["batch"])],
        initializer=[helper.make_tensor("hello", TensorProto.STRING, [], [b"hello"])],
    )
    return _save(_model(graph, "Lower-cases strings and tells which equal 'hello'."), path)


# --------------------------------------------------------------------------- demo: mlp

# Layer widths of the tiny MLP: input 16 -> 32 -> 32 -> 4.
MLP_SIZES = (16, 32, 32, 4)
MLP_SEED = 16
# Sample row used in the README and by `check` (and by the MLServer peer check).
MLP_SAMPLE = np.array(
    [[-0.75, -0.65, -0.55, -0.45, -0.35, -0.25, -0.15, -0.05, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75]],
    dtype=np.float32,
)


def mlp_weights():
    """[(W, b), ...] for the three Gemm layers; W is [out, in] (nn.Linear layout, Gemm
    transB=1). He-normal draws from numpy seed MLP_SEED, rounded to 4 decimals so the
    model does not depend on the last bits of the host's floating point."""
    rng = np.random.default_rng(MLP_SEED)
    layers = []
    for fan_in, fan_out in zip(MLP_SIZES[:-1], MLP_SIZES[1:]):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_out, fan_in))
        b = rng.normal(0.0, 0.1, size=fan_out)
        layers.append((np.round(w, 4).astype(np.float32), np.round(b, 4).astype(np.float32)))
    return layers


def write_mlp_model(path) -> Path:
    """input FP32 [batch, 16] -> Gemm 16->32, Relu -> Gemm 32->32, Relu -> Gemm 32->4 -> output FP32 [batch, 4].
    The tiny MLP the benchmarks use: real compute per row, yet small enough that the
    serving overhead dominates."""
    nodes, inits = [], []
    x = "input"
    layers = mlp_weights()
    for i, (w, b) in enumerate(layers, start=1):
        y = "output" if i == len(layers) else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], transB=1))
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        if i < len(layers):
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"]))
            x = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [_io("input", TensorProto.FLOAT, ["batch", MLP_SIZES[0]])],
        [_io("output", TensorProto.FLOAT, ["batch", MLP_SIZES[-1]])],
        initializer=inits,
    )
    return _save(_model(graph, "Tiny MLP 16-32-32-4 (Gemm+Relu, Gemm+Relu, Gemm), fixed random weights."), path)


def mlp_reference(x):
    """numpy reference for the tiny MLP (float64 arithmetic)."""
    h = np.asarray(x, dtype=np.float64)
    layers = mlp_weights()
    for i, (w, b) in enumerate(layers, start=1):
        h = h @ w.astype(np.float64).T + b
        if i < len(layers):
            h = np.maximum(h, 0.0)
    return h


def write_manifest(model_path, model: str, version: int, lineage: dict) -> Path:
    """Writes the manifest.json that `sluice models publish` would write beside
    model_path (schema 1: sha256 and size of the file, lineage), so the demo
    versions load as verified. `created` is fixed to keep outputs reproducible."""
    model_path = Path(model_path)
    data = model_path.read_bytes()
    manifest = {
        "schema": 1,
        "model": model,
        "version": version,
        "file": "model.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "created": "2026-11-26T00:00:00Z",
        "source_file": "models/generate.py",
        "lineage": lineage,
    }
    out = model_path.parent / "manifest.json"
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def generate_demo(root=DEMO_ROOT) -> list[Path]:
    root = Path(root)
    models = [
        ("iris", 1, write_iris_model(root / "iris" / "1" / "model.onnx", 1), "softmax regression on all four features"),
        ("iris", 2, write_iris_model(root / "iris" / "2" / "model.onnx", 2), "softmax regression on the sepal features only"),
        ("mixed", 1, write_mixed_model(root / "mixed" / "1" / "model.onnx"), "several inputs and outputs of different datatypes"),
        ("text", 1, write_text_model(root / "text" / "1" / "model.onnx"), "lower-cases strings"),
        ("mlp", 1, write_mlp_model(root / "mlp" / "1" / "model.onnx"), "tiny MLP 16-32-32-4 with fixed random weights"),
    ]
    written = []
    for model, version, path, description in models:
        lineage = {"generator": "models/generate.py", "description": description}
        written += [path, write_manifest(path, model, version, lineage)]
    return written


def generate_all() -> list[Path]:
    return generate_demo() + generate_fixtures()


# --------------------------------------------------------------------------- check


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(path, feeds: dict):
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def iris_reference(x, version: int):
    """numpy reference for an iris version: (label, probabilities)."""
    W, b = iris_weights(version)
    logits = x.astype(np.float64) @ W + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p.argmax(axis=1), p


def _sample(oip: str, shape=(2, 3)) -> np.ndarray:
    n = int(np.prod(shape))
    rng = np.random.default_rng(42)
    if oip == "BOOL":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if oip == "BYTES":
        return np.array([f"s{i}\u00e9" for i in range(n)], dtype=object).reshape(shape)
    if oip == "BF16":
        # bf16 bit patterns of a few exactly representable floats (as uint16).
        f = np.array([1.0, -2.5, 0.15625, 3.0e4, -0.0, 7.0][:n] + [0.5] * max(0, n - 6), dtype=np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).reshape(shape)
    dtype = {
        "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }[oip]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        vals = np.array([info.min, info.max, 0, 1, 2, 3][:n], dtype=dtype)
        return np.resize(vals, shape)
    return rng.normal(size=shape).astype(dtype)


def _check_identity(path, oip: str):
    x = _sample(oip)
    if oip == "BF16":
        # numpy has no bfloat16: bind the raw 16-bit patterns as an ONNX BFLOAT16 OrtValue.
        import onnxruntime as ort

        sess = _session(path)
        xv = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(x, TensorProto.BFLOAT16)
        # The output is bound to a preallocated bf16 OrtValue over a uint16 numpy
        # buffer (numpy cannot hold bf16), so the result bits land in `y`.
        y = np.zeros_like(x)
        yv = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(y, TensorProto.BFLOAT16)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("INPUT0", xv)
        binding.bind_ortvalue_output("OUTPUT0", yv)
        sess.run_with_iobinding(binding)
        assert yv.data_type() == "tensor(bfloat16)", yv.data_type()
        assert sess.get_outputs()[0].type == "tensor(bfloat16)", sess.get_outputs()[0].type
        assert np.array_equal(y, x), (y, x)
        return
    y = _run(path, {"INPUT0": x})["OUTPUT0"]
    assert y.shape == x.shape and y.dtype == x.dtype, (y.shape, y.dtype, x.shape, x.dtype)
    assert np.array_equal(y, x), (y, x)


def check_all(verbose: bool = True) -> None:
    """Loads every generated model in ONNX Runtime (CPU) and compares its outputs with numpy."""
    import onnxruntime as ort

    def ok(msg):
        if verbose:
            print(f"ok  {msg}")

    # iris
    x = np.concatenate([IRIS_SAMPLE, IRIS_EXTRA_ROWS])
    labels = {}
    for v in (1, 2):
        out = _run(DEMO_ROOT / "iris" / str(v) / "model.onnx", {"input": x})
        ref_label, ref_p = iris_reference(x, v)
        assert out["label"].dtype == np.int64 and out["label"].shape == (len(x),)
        assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (len(x), 3)
        np.testing.assert_allclose(out["probabilities"], ref_p, rtol=1e-4, atol=1e-6)
        assert np.array_equal(out["label"], ref_label), (out["label"], ref_label)
        labels[v] = (out["label"], out["probabilities"])
        ok(f"iris/{v}: labels {out['label'].tolist()}")
    assert not np.allclose(labels[1][1][:2], labels[2][1][:2]), "iris versions must differ on the sample"
    assert not np.array_equal(labels[1][0], labels[2][0]), "iris versions should disagree on some row"

    # mixed
    features = np.array([[1.0, 2.0, 3.0], [-1.5, 0.5, 4.0], [0.25, 0.25, 0.25]], dtype=np.float32)
    counts = np.array([[1, 2], [10, -3], [0, 0]], dtype=np.int64)
    mask = np.array([[True, False, True], [False, False, False], [False, True, False]])
    out = _run(DEMO_ROOT / "mixed" / "1" / "model.onnx", {"features": features, "counts": counts, "mask": mask})
    assert out["masked_sum"].dtype == np.float32 and np.allclose(out["masked_sum"], (features * mask).sum(axis=1))
    assert out["counts_total"].dtype == np.int64 and np.array_equal(out["counts_total"], counts.sum(axis=1))
    assert out["any_masked"].dtype == np.bool_ and np.array_equal(out["any_masked"], mask.any(axis=1))
    assert out["scaled"].dtype == np.float64 and np.array_equal(out["scaled"], features.astype(np.float64) * 2)
    ok("mixed/1")

    # text
    text = np.array(["Hello", "WORLD", "hello", "HeLLo there", "", "\u00c9T\u00c9"], dtype=object)
    out = _run(DEMO_ROOT / "text" / "1" / "model.onnx", {"text": text})
    lower = np.array([s.lower() for s in text], dtype=object)
    assert np.array_equal(out["lower"], lower), out["lower"]
    assert out["is_hello"].dtype == np.bool_ and np.array_equal(out["is_hello"], lower == "hello"), out["is_hello"]
    ok("text/1")

    # mlp
    path = DEMO_ROOT / "mlp" / "1" / "model.onnx"
    rng = np.random.default_rng(7)
    x = np.concatenate([MLP_SAMPLE, rng.normal(size=(7, MLP_SIZES[0])).astype(np.float32)])
    out = _run(path, {"input": x})["output"]
    assert out.dtype == np.float32 and out.shape == (len(x), MLP_SIZES[-1]), (out.dtype, out.shape)
    np.testing.assert_allclose(out, mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert len(np.unique(out.argmax(axis=1))) > 1, "the MLP should not be constant"
    one = _run(path, {"input": MLP_SAMPLE})["output"]
    np.testing.assert_allclose(one, out[:1], rtol=1e-5, atol=1e-6)
    sess = _session(path)
    assert [(i.name, i.shape, i.type) for i in sess.get_inputs()] == [("input", ["batch", 16], "tensor(float)")]
    assert [(o.name, o.shape, o.type) for o in sess.get_outputs()] == [("output", ["batch", 4], "tensor(float)")]
    ok(f"mlp/1: sample -> {one[0].tolist()}")

    # fixtures
    for oip, suffix in IDENTITY_SUFFIX.items():
        _check_identity(FIXTURE_ROOT / f"identity_{suffix}" / "1" / "model.onnx", oip)
        ok(f"identity_{suffix}/1")

    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 7, dtype=np.int32)
    out = _run(FIXTURE_ROOT / "add_sub" / "1" / "model.onnx", {"INPUT0": a, "INPUT1": b})
    assert np.array_equal(out["OUTPUT0"], a + b) and np.array_equal(out["OUTPUT1"], a - b)
    assert out["OUTPUT0"].dtype == np.int32 and out["OUTPUT1"].dtype == np.int32
    ok("add_sub/1")

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = _run(FIXTURE_ROOT / "fixed_shape" / "1" / "model.onnx", {"x": x})
    assert np.array_equal(out["y"], x * 3)
    sess = _session(FIXTURE_ROOT / "fixed_shape" / "1" / "model.onnx")
    assert sess.get_inputs()[0].shape == [2, 3], sess.get_inputs()[0].shape
    ok("fixed_shape/1")

    x = np.array([[1.0, -2.0, 0.5, 4.0], [0.0, 3.0, -1.25, 8.0], [2.0, 2.0, 2.0, 2.0]], dtype=np.float32)
    for v in (1, 2, 3):
        out = _run(FIXTURE_ROOT / "scale" / str(v) / "model.onnx", {"x": x})
        assert np.array_equal(out["y"], x * np.float32(v)), out["y"]
        ok(f"scale/{v}")

    z = np.arange(10, dtype=np.float32).reshape(2, 5)
    path = FIXTURE_ROOT / "scale_other_sig" / "1" / "model.onnx"
    out = _run(path, {"z": z})
    assert np.array_equal(out["y"], z)
    inp = _session(path).get_inputs()[0]
    assert inp.name == "z" and inp.shape == ["batch", 5], (inp.name, inp.shape)
    ok("scale_other_sig/1")

    out = _run(FIXTURE_ROOT / "scale_slow" / "1" / "model.onnx", {"x": x})
    assert np.array_equal(out["y"], x), out["y"]
    ok("scale_slow/1 (y = x, slowly)")
    failing = FIXTURE_ROOT / "scale_failing" / "1" / "model.onnx"
    out = _run(failing, {"x": x})
    assert np.array_equal(out["y"], x), out["y"]
    try:
        _run(failing, {"x": x[:1]})
    except Exception:
        ok("scale_failing/1: 3 rows pass, 1 row fails")
    else:
        raise AssertionError("scale_failing must fail on one row")

    try:
        _session(CORRUPT_PATH)
    except Exception:
        ok("corrupt.onnx is refused")
    else:
        raise AssertionError("corrupt.onnx loaded")

    if verbose:
        print(f"all models check out (onnxruntime {ort.__version__}, onnx {onnx.__version__})")


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("all", help="regenerate every demo model and fixture (the default)")
    sub.add_parser("check", help="run every generated model in ONNX Runtime and compare with numpy")
    p = sub.add_parser("scale", help="write one scale model (y = x * K, x/y FP32 [-1, 4]) to FILE")
    p.add_argument("--k", type=float, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("identity", help="write one identity model (INPUT0 -> OUTPUT0, [-1, -1]) to FILE")
    p.add_argument("--type", required=True, help="OIP (FP32, BYTES, ...) or ONNX (FLOAT, STRING, ...) name")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.cmd in (None, "all"):
        for path in generate_all():
            print(path.relative_to(REPO))
    elif args.cmd == "check":
        check_all()
    elif args.cmd == "scale":
        print(write_scale_model(args.out, args.k))
    elif args.cmd == "identity":
        try:
            et = onnx_type(args.type)
        except ValueError as e:
            parser.error(str(e))
        print(write_identity_model(args.out, et))
    return 0


if __name__ == "__main__":
    sys.exit(main())
