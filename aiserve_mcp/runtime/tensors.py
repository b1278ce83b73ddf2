"""Model inputs and outputs: their specs, the checks every request value passes before it reaches a
runtime, and the conversion of results back to JSON values. Shared by every runtime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from aiserve_mcp.core.errors import ValidationFailed

FEATURES: Final = "features"
ANY_DTYPE: Final = "any"  # the runtime declares no dtype: numbers are taken as float32, int64 or bool
NUMERIC_DTYPES: Final = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64"}
    | {"uint8", "uint16", "uint32", "uint64", "bool"}
)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype name (``"str"`` for string tensors, ``"any"`` when the
    runtime declares none; the onnxruntime type such as ``"seq(map(int64,tensor(float)))"`` for
    non-tensor outputs) and shape (``None`` for a free dimension; ``shape=None`` when even the rank is
    unknown)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    def to_json(self) -> dict[str, Any]:
        """``{"name", "dtype", "shape"}``; free dimensions (or an unknown shape) are ``null``."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        shape = data.get("shape")
        return cls(str(data["name"]), str(data["dtype"]), None if shape is None else tuple(shape))

    def shape_text(self) -> str:
        """The shape for messages, with ``?`` for free dimensions, e.g. ``[?, 4]``; ``any`` if unknown."""
        if self.shape is None:
            return "any"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def batchable(inputs: Sequence[TensorSpec]) -> bool:
    """True when every input's first dimension is free, so requests can be stacked into one batch."""
    return bool(inputs) and all(spec.shape and spec.shape[0] is None for spec in inputs)


def prepare(
    specs: Sequence[TensorSpec], raw: Mapping[str, Any], *, allow_nonfinite: bool = False
) -> dict[str, np.ndarray]:
    """Check and convert request values into the arrays a runtime takes.

    Names must match the inputs exactly, except that a model with one input also takes its value under
    ``features`` (the platform's own request form). Values are converted to the input's dtype without
    loss (no strings into numbers, no fractions into integers, no out-of-range integers, only 0/1 into
    bool, no NaN/inf unless ``allow_nonfinite``), must not be ragged, and must match fixed dimensions;
    a value one rank short of an input whose first dimension is free becomes a batch of one. An input of
    dtype ``any`` takes booleans as bool, integers as int64 and other numbers as float32. Every refusal
    is a :class:`ValidationFailed` naming the input, what it expects and what was sent."""
    if not isinstance(raw, Mapping):
        raise ValidationFailed("inputs must be an object mapping input names to values")
    names = [spec.name for spec in specs]
    if len(specs) == 1 and set(raw) == {FEATURES} and names[0] != FEATURES:
        raw = {names[0]: raw[FEATURES]}
    unknown = sorted(set(raw) - set(names))
    missing = [n for n in names if n not in raw]
    if unknown or missing:
        parts = ([f"unknown inputs {unknown}"] if unknown else []) + (
            [f"missing inputs {missing}"] if missing else []
        )
        raise ValidationFailed(
            f"{'; '.join(parts)}; the model takes {names}", {"expected": [s.to_json() for s in specs]}
        )
    return {spec.name: _convert(spec, raw[spec.name], allow_nonfinite) for spec in specs}


def to_python(value: Any) -> Any:
    """A runtime's output as JSON values: arrays and numpy scalars become (nested) lists and numbers."""
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
        raise _refuse(
            spec, "values out of range for " + ("int64" if spec.dtype == ANY_DTYPE else spec.dtype), sent
        )
    elif kind == "O":
        raise _refuse(spec, "the value is ragged or holds non-numbers", sent)
    elif kind in "USV":
        raise _refuse(spec, "strings are not numbers", sent)
    elif kind not in "biuf":
        raise _refuse(spec, f"values of type {array.dtype} are not accepted", sent)
    else:
        target = spec.dtype if spec.dtype != ANY_DTYPE else {"b": "bool", "f": "float32"}.get(kind, "int64")
        array = _cast_numeric(spec, np.dtype(target), array, allow_nonfinite, sent)
    return _fit_shape(spec, array, sent)


def _cast_numeric(
    spec: TensorSpec, target: np.dtype[Any], array: np.ndarray, allow_nonfinite: bool, sent: dict[str, Any]
) -> np.ndarray:
    kind = array.dtype.kind
    if kind == "f" and not allow_nonfinite and not np.isfinite(array).all():
        raise _refuse(spec, "NaN and infinite values are not accepted", sent)
    if target.kind == "f":
        if allow_nonfinite:
            with np.errstate(over="ignore"):  # values beyond the target's range become inf, silently
                return array.astype(target)
        if array.size and target.itemsize < 8 and np.abs(array).max() > np.finfo(target).max:
            raise _refuse(spec, f"values overflow {target}", sent)
        return array.astype(target)
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
            raise _refuse(spec, f"values out of range for {target}", sent)
    return array.astype(target)


def _fit_shape(spec: TensorSpec, array: np.ndarray, sent: dict[str, Any]) -> np.ndarray:
    if spec.shape is None:
        return np.ascontiguousarray(array)
    rank = len(spec.shape)
    if array.ndim == rank - 1 and spec.shape[0] is None:
        array = array[np.newaxis, ...]
    if array.ndim != rank:
        raise _refuse(spec, f"got rank {array.ndim} (shape {list(array.shape)}), expected rank {rank}", sent)
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want is not None and want != got:
            raise _refuse(spec, f"dimension {axis} is {got}, expected {want}", sent)
    return np.ascontiguousarray(array)
