"""The binary tensor data extension of the Open Inference Protocol (as Triton, KServe and MLServer speak
it): a body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensors, in the
order of the header's tensors that carry ``"parameters": {"binary_data_size": N}`` instead of ``data``.

Raw tensors are little-endian and row-major; BOOL takes one byte per element; BYTES is each element as a
4-byte little-endian length followed by its bytes. BYTES elements are taken as UTF-8 text (string tensors
of the models served are text) and written back as UTF-8."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import orjson

from aiserve_mcp.core.errors import ValidationFailed

SIZE: Final = "binary_data_size"
DTYPES: Final = {
    "BOOL": "bool",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str) -> tuple[dict[str, Any], memoryview]:
    """The JSON header (an object) and the raw tensor bytes after it; ``header_length`` is the
    ``Inference-Header-Content-Length`` value. :class:`ValidationFailed` for a length that is not a
    number or runs past the body, and for a header that is not a JSON object."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ValidationFailed(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the body "
            f"({len(body)} bytes)"
        )
    split = int(header_length)
    try:
        header = orjson.loads(body[:split])
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValidationFailed("the inference header must be a JSON object")
    return header, memoryview(body)[split:]


def binary_size(tensor: Mapping[str, Any]) -> int | None:
    """A tensor's ``binary_data_size`` parameter, ``None`` when it has none (its data is JSON)."""
    parameters = tensor.get("parameters")
    size = parameters.get(SIZE) if isinstance(parameters, Mapping) else None
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise ValidationFailed(
            f"tensor {tensor.get('name')!r}: binary_data_size must be a non-negative integer"
        )
    return size


def attach_inputs(header: dict[str, Any], raw: memoryview) -> dict[str, Any]:
    """``header`` with each binary input's ``data`` set to the array its bytes hold (shaped as declared).
    The binary sizes must add up to the raw bytes exactly, and each must be what the input's shape and
    datatype need; a binary input must not carry ``data`` too. What is not a tensor is left as it is, for
    the request's own validation to refuse."""
    inputs = header.get("inputs")
    offset = 0
    for tensor in inputs if isinstance(inputs, list) else []:
        if not isinstance(tensor, dict):
            continue  # the request's own validation names it
        size = binary_size(tensor)
        if size is None:
            continue
        if "data" in tensor:
            raise ValidationFailed(f"input {tensor.get('name')!r} has both data and binary_data_size")
        if offset + size > len(raw):
            raise ValidationFailed(
                f"input {tensor.get('name')!r}: binary_data_size {size} runs past the {len(raw)} bytes sent"
            )
        tensor["data"] = decode_tensor(tensor, raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise ValidationFailed(f"the binary inputs take {offset} bytes but {len(raw)} were sent")
    return header


def decode_tensor(tensor: Mapping[str, Any], raw: memoryview) -> np.ndarray:
    """The array of one binary tensor, from its ``name``, ``shape``, ``datatype`` and bytes."""
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValidationFailed(f"input {name!r}: shape must be a list of non-negative integers")
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, raw, count).reshape(shape)
    if datatype not in DTYPES:
        raise ValidationFailed(f"input {name!r}: datatype {datatype!r} has no binary form")
    kind = np.dtype(DTYPES[datatype])
    if len(raw) != count * kind.itemsize:
        raise ValidationFailed(
            f"input {name!r}: {len(raw)} bytes, but shape {shape} of {datatype} takes {count * kind.itemsize}"
        )
    array = np.frombuffer(raw, dtype=kind).reshape(shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise ValidationFailed(f"input {name!r}: BOOL bytes must be 0 or 1")
    return array.astype(kind.newbyteorder("="), copy=False)


def _decode_bytes(name: object, raw: memoryview, count: int) -> np.ndarray:
    items: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValidationFailed(f"input {name!r}: a BYTES element's 4-byte length is cut short")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValidationFailed(f"input {name!r}: a BYTES element runs past its binary_data_size")
        try:
            items.append(bytes(raw[offset : offset + length]).decode())
        except UnicodeDecodeError:
            raise ValidationFailed(f"input {name!r}: BYTES elements must be UTF-8 text") from None
        offset += length
    if len(items) != count:
        raise ValidationFailed(f"input {name!r}: {len(items)} BYTES elements, but its shape holds {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def encode_tensor(datatype: str, data: Sequence[Any] | np.ndarray) -> bytes:
    """The binary form of a tensor's row-major ``data`` of ``datatype``. A BYTES element that is neither
    bytes nor text (a runtime's map or sequence output) is written as its JSON text."""
    if datatype == "BYTES":
        parts = []
        for item in data.reshape(-1) if isinstance(data, np.ndarray) else data:
            if isinstance(item, bytes):
                encoded = item
            else:
                encoded = item.encode() if isinstance(item, str) else orjson.dumps(item)
            parts += [_LENGTH.pack(len(encoded)), encoded]
        return b"".join(parts)
    return np.ascontiguousarray(np.asarray(data, dtype=DTYPES[datatype])).tobytes()


def binary_outputs(request: Mapping[str, Any]) -> Callable[[str], bool]:
    """Whether the request asks an output (by name) in binary: the output's own ``binary_data`` parameter
    when it gives one, else the request's ``binary_data_output`` (JSON when neither says true)."""
    parameters = request.get("parameters")
    default = isinstance(parameters, Mapping) and parameters.get("binary_data_output") is True
    outputs = request.get("outputs")
    named = {
        o["name"]: o["parameters"]["binary_data"] is True
        for o in (outputs if isinstance(outputs, list) else [])
        if isinstance(o, Mapping)
        and isinstance(o.get("parameters"), Mapping)
        and "binary_data" in o["parameters"]
    }
    return lambda name: named.get(name, default)


def encode_response(response: dict[str, Any], binary: Callable[[str], bool]) -> tuple[bytes, int | None]:
    """The response body with the outputs that ``binary`` picks (by name) moved after the JSON header, in
    the order of its outputs, each carrying ``binary_data_size``; and the header's length (``None`` when no
    output is binary: the body is plain JSON)."""
    tails: list[bytes] = []
    for output in response.get("outputs", []):
        if binary(output["name"]):
            raw = encode_tensor(output["datatype"], output.pop("data"))
            output["parameters"] = {**output.get("parameters", {}), SIZE: len(raw)}
            tails.append(raw)
    header = orjson.dumps(response)
    if not tails:
        return header, None
    return b"".join([header, *tails]), len(header)
