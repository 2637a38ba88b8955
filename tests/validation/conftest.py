"""Fixtures and helpers for `sluice models validate`, run as the real
binary on seeded data and on small ONNX models built here with the `onnx`
package (nothing is committed but this code).

* `Repo(tmp_path)`: a model repository; `repo.add(model, onnx_model,
  version, toml=...)` publishes a version with `sluice models publish`
  (so it has a manifest) and writes `model.toml`; `repo.validate(...)`
  runs the command and returns (CompletedProcess, report dict or None).
* Model builders: `logistic_model` (MatMul + Add + Sigmoid or Softmax,
  known weights), `linear_model` (MatMul + Add), in FP64 or FP32.
* `predict(model, x, batch)`: the model's answers from onnxruntime's
  Python API, in the batches the CLI uses (so FP32 answers agree bit for
  bit).
* `write_csv(path, columns)`: columns (name -> values) as CSV.

The binary is found as the OIP suite finds it (`tests/oip/oiphelpers.py`,
imported by path).
"""

from __future__ import annotations

import csv
import subprocess
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oip"))

import oiphelpers as h  # noqa: E402

# Shared hooks: fail fast without the binary; servers' logs in failure reports.
from oiphelpers import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401

OPSET = 21
IR_VERSION = 10
CLI_TIMEOUT_S = 300.0


def _model(nodes, inputs, outputs, initializers, name) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="tests/validation")
    onnx.checker.check_model(model, full_check=True)
    return model


def logistic_model(weights, bias, head="sigmoid", dtype=np.float64) -> onnx.ModelProto:
    """x [batch, F] -> probabilities: sigmoid(x·w + b) [batch, 1] for a
    (F,) or (F, 1) `weights`, softmax(x·W + b) [batch, K] for (F, K)."""
    w = np.asarray(weights, dtype=dtype)
    if w.ndim == 1:
        w = w[:, None]
    b = np.asarray(bias, dtype=dtype).reshape(w.shape[1])
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    f, k = w.shape
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z0"]),
             helper.make_node("Add", ["z0", "b"], ["z"])]
    if head == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["z"], ["probabilities"]))
    else:
        nodes.append(helper.make_node("Softmax", ["z"], ["probabilities"], axis=-1))
    return _model(nodes,
                  [helper.make_tensor_value_info("x", elem, ["batch", f])],
                  [helper.make_tensor_value_info("probabilities", elem, ["batch", k])],
                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
                  "logistic")


def linear_model(weights, bias, dtype=np.float64) -> onnx.ModelProto:
    """x [batch, F] -> y [batch, 1] = x·w + b."""
    w = np.asarray(weights, dtype=dtype)[:, None]
    b = np.asarray([bias], dtype=dtype)
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    return _model([helper.make_node("MatMul", ["x", "w"], ["z"]),
                   helper.make_node("Add", ["z", "b"], ["y"])],
                  [helper.make_tensor_value_info("x", elem, ["batch", w.shape[0]])],
                  [helper.make_tensor_value_info("y", elem, ["batch", 1])],
                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
                  "linear")


def predict(model: onnx.ModelProto, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model's first output on `x` (run in batches of `batch` rows, as
    the CLI runs it), as float64."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    xs = x.astype(dtype)
    out = [sess.run(None, {inp.name: xs[i:i + batch]})[0] for i in range(0, len(xs), batch)]
    return np.concatenate(out).astype(np.float64)


def write_csv(path: Path, columns: dict) -> Path:
    names = list(columns)
    n = len(next(iter(columns.values())))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in range(n):
            w.writerow([_cell(columns[c][i]) for c in names])
    return path


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # shortest text that reads back to the same f64
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(e) for e in v) + "]"
    return repr(v)


class Repo:
    def __init__(self, root: Path):
        self.root = root
        self.models = root / "models"
        self.models.mkdir(parents=True, exist_ok=True)

    def add(self, model: str, onnx_model: onnx.ModelProto, version: int, task: str,
            validation: dict | None = None, extra: str = "") -> Path:
        src = self.root / f"{model}-v{version}.onnx"
        onnx.save(onnx_model, src)
        r = h.publish_cli(self.models, model, src, version)
        assert r.returncode == 0, r.stderr
        lines = [f"task = {toml_value(task)}", extra, "[validation]"]
        for k, v in (validation or {}).items():
            lines.append(f"{k} = {toml_value(v)}")
        (self.models / model / "model.toml").write_text("\n".join(lines) + "\n")
        return self.models / model / str(version)

    def version_dir(self, model: str, version: int) -> Path:
        return self.models / model / str(version)

    def validate(self, model: str, version: int, data: Path, label: str = "y", groups=(),
                 extra=(), json_out: bool = True):
        cmd = [str(h.require_binary()), "models", "validate", model, "--version", str(version),
               "--data", str(data), "--label", label, "--models", str(self.models)]
        for g in groups:
            cmd += ["--group", g]
        if json_out:
            cmd.append("--json")
        cmd += list(extra)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                             env=h.clean_env())
        report = json.loads(r.stdout) if json_out and r.returncode in (0, 1) else None
        return r, report
