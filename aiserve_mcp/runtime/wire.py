"""Arrays between the server and a model worker: ``{"dtype", "shape", "data"}`` with the C-order bytes in
base64. Decoding checks the dtype against a fixed list and the byte count against the shape, so a
message is only ever numbers (never an object array, never a pickle)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.runtime.tensors import NUMERIC_DTYPES


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """``array`` as a JSON-safe mapping; :class:`ValidationFailed` for a dtype outside the numeric list."""
    if array.dtype.name not in NUMERIC_DTYPES:
        raise ValidationFailed(f"arrays of {array.dtype} cannot be sent to a worker")
    data = np.ascontiguousarray(array)
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(data.tobytes()).decode(),
    }


def decode_array(message: Any) -> np.ndarray:
    """The array that :func:`encode_array` encoded; :class:`ValidationFailed` for anything else."""
    if not isinstance(message, Mapping):
        raise ValidationFailed("a tensor must be an object with dtype, shape and data")
    dtype, shape, data = message.get("dtype"), message.get("shape"), message.get("data")
    if dtype not in NUMERIC_DTYPES:
        raise ValidationFailed(f"tensor dtype must be one of {sorted(NUMERIC_DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValidationFailed("tensor shape must be a list of non-negative integers")
    if not isinstance(data, str):
        raise ValidationFailed("tensor data must be base64 text")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed(f"tensor data is not base64: {exc}") from exc
    kind = np.dtype(dtype)
    if len(raw) != math.prod(shape) * kind.itemsize:
        raise ValidationFailed(f"tensor data holds {len(raw)} bytes, not what shape {shape} of {dtype} needs")
    return np.frombuffer(raw, dtype=kind).reshape(shape)


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: encode_array(array) for name, array in arrays.items()}


def decode_arrays(message: Any) -> dict[str, np.ndarray]:
    if not isinstance(message, Mapping) or not all(isinstance(k, str) for k in message):
        raise ValidationFailed("tensors must be an object mapping names to tensors")
    return {name: decode_array(value) for name, value in message.items()}
