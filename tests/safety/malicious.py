"""Model files that must never reach ONNX Runtime, each built with the
`onnx` helper API, and the reason the safety check gives for each.

Every model has the signature of the `scale` fixture (x FP32 [batch, 4] ->
y FP32 [batch, 4]), so the only reason to refuse it is what is in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

CUSTOM_DOMAIN = "com.evil"


def _io(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])


def _model(nodes, initializers, outputs=("y",), opsets=(("", 21),), ir=10):
    graph = helper.make_graph(nodes, "scale", [_io("x")], [_io(o) for o in outputs],
                              initializer=initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = ir
    return m


def _k(value=2.0):
    return numpy_helper.from_array(np.array(value, dtype=np.float32), "k")


def good():
    """y = x * 2."""
    return _model([helper.make_node("Mul", ["x", "k"], ["y"])], [_k()])


def _external(location):
    k = _k()
    k.ClearField("raw_data")
    k.data_location = TensorProto.EXTERNAL
    entry = k.external_data.add()
    entry.key, entry.value = "location", location
    entry = k.external_data.add()
    entry.key, entry.value = "length", "4"
    return _model([helper.make_node("Mul", ["x", "k"], ["y"])], [k])


def passwd():
    return _external("../../etc/passwd")


def absolute():
    return _external("/etc/passwd")


def custom_domain():
    return _model([helper.make_node("Mul", ["x", "k"], ["y"], domain=CUSTOM_DOMAIN)], [_k()],
                  opsets=(("", 21), (CUSTOM_DOMAIN, 1)))


def huge_initializer():
    """k claims 2^20 x 2^20 floats (4 TiB) and carries 4 bytes."""
    k = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20],
                    raw_data=np.float32(2.0).tobytes())
    return _model([helper.make_node("Mul", ["x", "k"], ["y"])], [k])


def missing_output():
    """The node writes z; the declared output y comes from nothing."""
    return _model([helper.make_node("Mul", ["x", "k"], ["z"])], [_k()])


def future_opset():
    return _model([helper.make_node("Mul", ["x", "k"], ["y"])], [_k()], opsets=(("", 30),))


@dataclass
class Case:
    build: Callable
    reason: str  # in the check's message, and in the repository index


CASES = {
    "passwd": Case(passwd, 'external data at "../../etc/passwd", which has a ".." component'),
    "absolute": Case(absolute, 'external data at absolute path "/etc/passwd"'),
    "custom_domain": Case(custom_domain, f'operator domain "{CUSTOM_DOMAIN}" is not allowed'),
    "huge_initializer": Case(huge_initializer,
                             'initializer "k" in graph "scale" (the main graph) declares 4398046511104 bytes'),
    "missing_output": Case(missing_output, 'output "y" of graph "scale" (the main graph) is not produced'),
    "future_opset": Case(future_opset, "imports ai.onnx opset 30, outside the supported range 7..=26"),
}


def write(model, path: Path) -> Path:
    """Serialises without the onnx checker or external-data handling: the
    file is exactly what was built."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
