"""ONNX models served with onnxruntime, with every input checked and converted before it reaches the
session."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.runtime.cpus import usable_cpus
from aiserve_mcp.runtime.tensors import TensorSpec, batchable, prepare, to_python

_ORT_DTYPES: Final = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)


class OnnxModel:
    """A loaded ONNX model: its input/output specs and checked inference."""

    runtime: Final = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self._session = session
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(a) for a in session.get_inputs())
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(a) for a in session.get_outputs())
        self.used_gpu: bool = "CUDAExecutionProvider" in session.get_providers()
        for spec in self.inputs:
            if spec.dtype not in _ORT_DTYPES.values():
                raise ValidationFailed(
                    f"the model's input {spec.name!r} has type {spec.dtype}, which is not supported"
                )

    @classmethod
    def load(cls, path: Path, *, prefer_gpu: bool, threads: int | None = None) -> OnnxModel:
        """Open ``path`` in an onnxruntime session (CUDA only when ``prefer_gpu`` and available, otherwise
        CPU) with full graph optimisation, ``threads`` intra-op threads (default ``min(4, usable CPUs)``:
        the affinity mask and the cgroup quota, see ``runtime.cpus``), one inter-op thread and only errors
        logged. When the threads take every usable CPU they do not spin while idle, so they never hold a
        core the server's own thread needs. :class:`ValidationFailed` when onnxruntime refuses it."""
        import onnxruntime as ort  # type: ignore[import-untyped]

        cpus = usable_cpus()
        intra = threads or min(4, cpus)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = 1
        if intra >= cpus:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise ValidationFailed(f"onnxruntime could not load the model: {exc}") from exc
        return cls(session)

    @property
    def batchable(self) -> bool:
        """True when every input's first dimension is free, so requests can be stacked into one batch."""
        return batchable(self.inputs)

    def prepare(self, raw: Mapping[str, Any], *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
        """Check and convert request values for this model's inputs (see :func:`tensors.prepare`)."""
        return prepare(self.inputs, raw, allow_nonfinite=allow_nonfinite)

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Run the session on prepared arrays; outputs by name. :class:`ValidationFailed` when onnxruntime
        rejects the inputs or fails on them."""
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException  # type: ignore[import-untyped]

        try:
            values = self._session.run(None, dict(arrays))
        except (Fail, InvalidArgument, RuntimeException) as exc:
            raise ValidationFailed(f"the model could not run on these inputs: {exc}") from exc
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def predict(self, raw: Mapping[str, Any], *, allow_nonfinite: bool = False) -> dict[str, list[Any]]:
        """:meth:`prepare`, :meth:`run`, and every output as nested Python lists."""
        outputs = self.run(self.prepare(raw, allow_nonfinite=allow_nonfinite))
        return {name: to_python(value) for name, value in outputs.items()}
