"""A minimal ONNX runtime for MLServer, so MLServer can serve Sluice's demo models as a
benchmark peer. MLServer 1.7 ships no ONNX runtime of its own.

model-settings.json::

    {"name": "mlp", "implementation": "onnx_runtime.OnnxModel",
     "parameters": {"uri": "/abs/path/models/mlp/1", "version": "1"}}

``parameters.uri`` is the version directory holding ``model.onnx`` (or the .onnx file
itself). The session runs on the CPU provider with one intra-op and one inter-op thread,
like Sluice's default. ``parameters.extra.intra_op_num_threads`` overrides the former.

``predict`` decodes each V2 request input with ``NumpyCodec`` (FP32 -> float32 and so on),
runs the session, and encodes every output (or only those the request names in
``outputs``) with ``NumpyCodec``. scripts/mlserver-serve.sh writes the settings and starts
MLServer with this directory on PYTHONPATH.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, InvalidModelURI
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

# ONNX Runtime type string -> Open Inference Protocol datatype (for the V2 metadata).
_ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _metadata(args) -> list[MetadataTensor]:
    return [
        MetadataTensor(
            name=a.name,
            datatype=_ORT_TO_OIP.get(a.type, a.type),
            shape=[d if isinstance(d, int) else -1 for d in a.shape],
        )
        for a in args
    ]


class OnnxModel(MLModel):
    """Serves one ONNX file with ``onnxruntime.InferenceSession`` (CPU)."""

    async def load(self) -> bool:
        params = self.settings.parameters
        uri = params.uri if params is not None else None
        if not uri:
            raise InvalidModelURI(self.name)
        path = uri if uri.endswith(".onnx") else os.path.join(uri, "model.onnx")
        extra = (params.extra or {}) if params is not None else {}

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("intra_op_num_threads", 1))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]

        # V2 metadata from the graph when the settings do not declare it.
        if not self.inputs:
            self.inputs = _metadata(self._session.get_inputs())
        if not self.outputs:
            self.outputs = _metadata(self._session.get_outputs())
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        names = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        try:
            results = self._session.run(names, feeds)
        except Exception as e:  # onnxruntime's errors: wrong name, dtype or shape
            raise InferenceError(f"model {self.name}: {e}") from e
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, np.asarray(r)) for name, r in zip(names, results)],
        )
