"""ONNX models served with onnxruntime, with every input checked and converted before it reaches the
session."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from aiserve_mcp.errors import ValidationFailed

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


FEATURES = "features"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype name (``"str"`` for string tensors; the onnxruntime
    type such as ``"seq(map(int64,tensor(float)))"`` for non-tensor outputs) and shape (``None`` for a
    symbolic or free dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"name", "dtype", "shape"}``; free dimensions are ``null`` in ``shape``."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def shape_text(self) -> str:
        """The shape for messages, with ``?`` for free dimensions, e.g. ``[?, 4]``."""
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


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
        CPU) with full graph optimisation, ``threads`` intra-op threads (default ``min(4, cpu_count)``),
        one inter-op thread and only errors logged. :class:`ValidationFailed` when onnxruntime refuses it."""
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
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
        return all(spec.shape and spec.shape[0] is None for spec in self.inputs)

    def prepare(self, raw: Mapping[str, Any], *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
        """Check and convert request values into the arrays the session takes.

        Names must match the inputs exactly, except that a model with one input also takes its value under
        ``features`` (the platform's own request form). Values are converted to the input's dtype without
        loss (no strings into numbers, no fractions into integers, no out-of-range integers, only 0/1 into
        bool, no NaN/inf unless ``allow_nonfinite``), must not be ragged, and must match fixed dimensions;
        a value one rank short of an input whose first dimension is free becomes a batch of one. Every
        refusal is a :class:`ValidationFailed` naming the input, what it expects and what was sent."""
        if not isinstance(raw, Mapping):
            raise ValidationFailed("inputs must be an object mapping input names to values")
        names = [spec.name for spec in self.inputs]
        if len(self.inputs) == 1 and set(raw) == {FEATURES} and names[0] != FEATURES:
            raw = {names[0]: raw[FEATURES]}
        unknown = sorted(set(raw) - set(names))
        missing = [n for n in names if n not in raw]
        if unknown or missing:
            parts = ([f"unknown inputs {unknown}"] if unknown else []) + (
                [f"missing inputs {missing}"] if missing else []
            )
            raise ValidationFailed(
                f"{'; '.join(parts)}; the model takes {names}",
                {"expected": [s.to_json() for s in self.inputs]},
            )
        return {spec.name: _convert(spec, raw[spec.name], allow_nonfinite) for spec in self.inputs}

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


def to_python(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        return {(k.item() if isinstance(k, np.generic) else k): to_python(v) for k, v in value.items()}
    return value


def _refuse(spec: TensorSpec, problem: str, sent: dict[str, Any] | None = None) -> ValidationFailed:
    return ValidationFailed(
        f"input {spec.name!r} (expects {spec.dtype} of shape {spec.shape_text()}): {problem}",
        {"input": spec.name, "expected": spec.to_json(), **({"received": sent} if sent else {})},
    )


def _convert(spec: TensorSpec, value: Any, allow_nonfinite: bool) -> np.ndarray:
    if spec.dtype == "bfloat16":
        raise _refuse(spec, "bfloat16 inputs are not supported")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _refuse(spec, f"the value is ragged or not an array ({exc})") from exc
    kind = array.dtype.kind
    sent = {"dtype": str(array.dtype), "shape": list(array.shape)}
    if spec.dtype == "str":
        if kind not in "UO" or (kind == "O" and not all(isinstance(v, str) for v in array.flat)):
            raise _refuse(spec, "expected strings", sent)
        array = array.astype(object)
    elif kind == "O" and array.size and all(type(v) is int for v in array.flat):
        raise _refuse(spec, f"values out of range for {spec.dtype}", sent)
    elif kind == "O":
        raise _refuse(spec, "the value is ragged or holds non-numbers", sent)
    elif kind in "USV":
        raise _refuse(spec, "strings are not numbers", sent)
    elif kind not in "biuf":
        raise _refuse(spec, f"values of type {array.dtype} are not accepted", sent)
    else:
        array = _cast_numeric(spec, array, allow_nonfinite, sent)
    return _fit_shape(spec, array, sent)


def _cast_numeric(
    spec: TensorSpec, array: np.ndarray, allow_nonfinite: bool, sent: dict[str, Any]
) -> np.ndarray:
    target = np.dtype(spec.dtype)
    kind = array.dtype.kind
    if kind == "f" and not allow_nonfinite and not np.isfinite(array).all():
        raise _refuse(spec, "NaN and infinite values are not accepted", sent)
    if target.kind == "f":
        with np.errstate(over="ignore"):
            out = array.astype(target)
        if not allow_nonfinite and not np.isfinite(out).all():
            raise _refuse(spec, f"values overflow {spec.dtype}", sent)
        return out
    if target.kind == "b":
        if kind != "b" and not np.isin(array, (0, 1)).all():
            raise _refuse(spec, "booleans must be true/false or 0/1", sent)
        return array.astype(target)
    if kind == "f" and (not np.isfinite(array).all() or (array != np.floor(array)).any()):
        raise _refuse(spec, "values with fractions are not integers", sent)
    if array.size and kind != "b":
        info = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise _refuse(spec, f"values out of range for {spec.dtype}", sent)
    return array.astype(target)


def _fit_shape(spec: TensorSpec, array: np.ndarray, sent: dict[str, Any]) -> np.ndarray:
    rank = len(spec.shape)
    if array.ndim == rank - 1 and spec.shape[0] is None:
        array = array[np.newaxis, ...]
    if array.ndim != rank:
        raise _refuse(spec, f"got rank {array.ndim} (shape {list(array.shape)}), expected rank {rank}", sent)
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want is not None and want != got:
            raise _refuse(spec, f"dimension {axis} is {got}, expected {want}", sent)
    return np.ascontiguousarray(array)
