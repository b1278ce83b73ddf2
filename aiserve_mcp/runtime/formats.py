"""The model formats this platform recognises, whether each can be served here, and content-based detection.

Detection reads magic bytes and structure; a file's extension is only a hint. Zip archives are checked for
bombs and path traversal from their central directory before any member is read, and pickles are inspected
statically (:mod:`aiserve_mcp.runtime.pickle_scan`), never loaded.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import lzma
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.runtime.pickle_scan import disallowed_globals, scan_pickle


@dataclass(frozen=True)
class ModelFormat:
    """One recognised model format: its id, usual file extensions, framework and a short description."""

    id: str
    extensions: tuple[str, ...]
    framework: str
    description: str


FORMATS: Final[tuple[ModelFormat, ...]] = (
    ModelFormat("onnx", (".onnx",), "ONNX Runtime", "ONNX graph (protobuf)"),
    ModelFormat("pytorch", (".pt", ".pth", ".bin"), "PyTorch", "TorchScript archive or torch.save weights"),
    ModelFormat("tensorflow", (".zip", ".pb"), "TensorFlow", "TensorFlow SavedModel (zipped directory)"),
    ModelFormat("keras", (".keras", ".h5", ".hdf5"), "Keras", "Keras v3 archive or HDF5 model"),
    ModelFormat("tflite", (".tflite",), "TensorFlow Lite", "TensorFlow Lite flatbuffer"),
    ModelFormat("sklearn", (".pkl", ".pickle", ".joblib"), "scikit-learn", "pickled or joblib estimator"),
    ModelFormat("xgboost", (".json", ".ubj"), "XGBoost", "XGBoost booster (JSON or UBJSON)"),
    ModelFormat("lightgbm", (".txt", ".lgb"), "LightGBM", "LightGBM text model"),
    ModelFormat("safetensors", (".safetensors",), "safetensors", "tensors with a JSON header"),
    ModelFormat("gguf", (".gguf",), "llama.cpp", "GGUF quantised language model"),
    ModelFormat("tensorrt", (".engine", ".plan", ".trt"), "TensorRT", "serialised TensorRT engine"),
    ModelFormat("coreml", (".mlmodel", ".mlpackage", ".zip"), "Core ML", "Core ML model or zipped package"),
    ModelFormat("pmml", (".pmml", ".xml"), "PMML", "Predictive Model Markup Language document"),
)
_BY_ID: Final = {fmt.id: fmt for fmt in FORMATS}
_PACKAGES: Final = {
    "tensorflow": "tensorflow",
    "keras": "keras",
    "tflite": "tflite_runtime",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "gguf": "llama_cpp",
    "tensorrt": "tensorrt",
    "coreml": "coremltools",
    "pmml": "pypmml",
}


@dataclass(frozen=True)
class Servability:
    """Whether this server can run a format: ``runtime`` names the engine, ``reason`` says why not."""

    servable: bool
    runtime: str | None
    reason: str


@dataclass(frozen=True)
class Detection:
    """What a file is: a :attr:`ModelFormat.id`, an optional variant, and a human-readable detail."""

    format: str
    variant: str | None
    detail: str


def format_by_id(format_id: str) -> ModelFormat:
    """The :class:`ModelFormat` with this id; :class:`ValidationFailed` for an unknown id."""
    try:
        return _BY_ID[format_id]
    except KeyError:
        known = ", ".join(_BY_ID)
        raise ValidationFailed(f"unknown model format {format_id!r}; known formats: {known}") from None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def servability(format_id: str, variant: str | None = None) -> Servability:
    """Whether a model of ``format_id``/``variant`` can be served here, checked without importing runtimes.

    ONNX is served by onnxruntime and TorchScript by torch when installed; pickles (sklearn, plain
    ``torch.save`` weights) and bare tensors are never served; other formats need a runtime this server
    lacks."""
    fmt = format_by_id(format_id)
    if format_id == "onnx":
        if _installed("onnxruntime"):
            return Servability(True, "onnxruntime", "")
        return Servability(False, None, "ONNX Runtime is not installed on this server: install onnxruntime")
    if format_id == "pytorch":
        if variant == "torchscript":
            if _installed("torch"):
                return Servability(True, "torch", "")
            return Servability(False, None, "PyTorch is not installed on this server: install torch")
        if variant == "weights":
            return Servability(
                False, None, "plain weights without an architecture; export TorchScript or ONNX"
            )
        return Servability(
            False, None, "legacy torch.save pickles run code when loaded; export TorchScript or ONNX"
        )
    if format_id == "sklearn":
        return Servability(False, None, "pickles run code when loaded; export to ONNX (skl2onnx)")
    if format_id == "safetensors":
        return Servability(False, None, "tensors without an architecture; export TorchScript or ONNX")
    package = _PACKAGES[format_id]
    if not _installed(package):
        return Servability(False, None, f"{fmt.framework} is not installed on this server: install {package}")
    return Servability(False, None, f"serving {fmt.framework} models is not supported yet; export to ONNX")


MAX_ZIP_MEMBERS: Final = 100_000
MAX_ZIP_UNCOMPRESSED: Final = 20 * 1024**3
ZIP_SLACK: Final = 64 * 1024**2
MAX_COMPRESSION_RATIO: Final = 200
MAX_PICKLE_BYTES: Final = 256 * 1024**2
_HDF5_MAGIC: Final = b"\x89HDF\r\n\x1a\n"
_TORCH_LEGACY_MAGIC: Final = 0x1950A86A20F9469CFC6C
_DRIVE: Final = re.compile(r"^[A-Za-z]:")


def detect(path: Path, filename: str | None = None, declared: str | None = None) -> Detection:
    """Identify the model in ``path`` from its content (``filename``'s extension is only a hint).

    Raises :class:`ValidationFailed` for unrecognised, corrupt or unsafe files (zip bombs, path traversal,
    pickles that would run code, ONNX with external data) and when ``declared`` names a format other than
    the one the content shows."""
    if declared is not None:
        format_by_id(declared)
    ext = Path(filename or path.name).suffix.lower()
    size = path.stat().st_size
    if size == 0:
        raise ValidationFailed("the model file is empty")
    with path.open("rb") as fh:
        head = fh.read(4096)
    found = _by_content(path, head, size, ext, declared)
    if found is None and (ext in _BY_ID["tensorrt"].extensions or declared == "tensorrt"):
        found = Detection("tensorrt", None, "TensorRT engine (recognised by its name only; not verified)")
    if found is None:
        raise ValidationFailed(f"unrecognised model format (file {filename or path.name!r}, {size} bytes)")
    if declared is not None and declared != found.format:
        raise ValidationFailed(
            f"the file was declared as {declared} but its content is {found.format} ({found.detail})",
            {"declared": declared, "detected": found.format},
        )
    return found


def _by_content(path: Path, head: bytes, size: int, ext: str, declared: str | None) -> Detection | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _detect_zip(path, size)
    if head[:8] == _HDF5_MAGIC or head[512:520] == _HDF5_MAGIC:
        return Detection("keras", "h5", "HDF5 model file (Keras .h5)")
    if head[:4] == b"GGUF" and len(head) >= 8:
        return Detection("gguf", None, f"GGUF v{struct.unpack_from('<I', head, 4)[0]}")
    if head[4:8] == b"TFL3":
        return Detection("tflite", None, "TensorFlow Lite flatbuffer (TFL3)")
    if b"ftrt" in head[:32]:
        return Detection("tensorrt", None, "TensorRT engine (ftrt)")
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return _detect_pickle(head)
    joblib = _compressed_pickle(head)
    if joblib is not None:
        return Detection("sklearn", "joblib", f"{joblib}-compressed pickle (joblib)")
    safetensors = _detect_safetensors(path, head, size)
    if safetensors is not None:
        return safetensors
    text = _detect_text(head)
    if text is not None:
        return text
    if head[:1] == b"\x08" or ext in (".onnx", ".mlmodel", ".pb") or declared == "onnx":
        return _detect_protobuf(path, ext, declared)
    return None


def _detect_pickle(head: bytes) -> Detection:
    protocol = head[1]
    if _TORCH_LEGACY_MAGIC.to_bytes(10, "little") in head[:32]:
        return Detection("pytorch", "legacy", f"legacy torch.save pickle (protocol {protocol})")
    variant = "joblib" if b"joblib" in head else "pickle"
    return Detection("sklearn", variant, f"Python pickle (protocol {protocol})")


def _compressed_pickle(head: bytes) -> str | None:
    candidates: list[tuple[str, Any]] = []
    if head[:2] == b"\x1f\x8b":
        candidates.append(("gzip", zlib.decompressobj(zlib.MAX_WBITS | 16)))
    elif head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
        candidates.append(("zlib", zlib.decompressobj()))
    elif head[:3] == b"BZh":
        candidates.append(("bz2", bz2.BZ2Decompressor()))
    elif head[:6] == b"\xfd7zXZ\x00":
        candidates.append(("xz", lzma.LZMADecompressor()))
    for name, decompressor in candidates:
        try:
            out = decompressor.decompress(head, 16)
        except (zlib.error, OSError, EOFError, lzma.LZMAError):
            return None
        if out[:1] == b"\x80" and len(out) > 1 and 2 <= out[1] <= 5:
            return name
    return None


def _detect_safetensors(path: Path, head: bytes, size: int) -> Detection | None:
    if size < 10 or head[8:9] != b"{":
        return None
    (length,) = struct.unpack_from("<Q", head, 0)
    if length < 2 or 8 + length > size or length > 100 * 1024**2:
        return None
    with path.open("rb") as fh:
        fh.seek(8)
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed(f"not a valid safetensors file: the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValidationFailed("not a valid safetensors file: the header is not a JSON object")
    data_size = size - 8 - length
    tensors = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("dtype"), str)
            or not isinstance(entry.get("shape"), list)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise ValidationFailed(f"not a valid safetensors file: bad header entry for tensor {name!r}")
        tensors += 1
    return Detection("safetensors", None, f"safetensors, {tensors} tensors")


def _detect_text(head: bytes) -> Detection | None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        body = text[1:].lstrip()
        if body.startswith(b'"learner"') or (body.startswith(b'"version"') and b'"learner"' in text):
            return Detection("xgboost", "json", "XGBoost model (JSON)")
        if b"learner" in text[:32]:
            return Detection("xgboost", "ubj", "XGBoost model (UBJSON)")
    if re.match(rb"tree\r?\nversion=v", text):
        return Detection("lightgbm", None, "LightGBM text model")
    if text.startswith(b"<") and re.search(rb"<(?:\w+:)?PMML[\s>]", text):
        return Detection("pmml", None, "PMML document")
    return None


def _detect_protobuf(path: Path, ext: str, declared: str | None) -> Detection | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        model = None
    if model is not None and not model.HasField("graph"):
        error, model = "the file has no graph", None
    if model is not None:
        if _uses_external_data(model.graph):
            raise ValidationFailed(
                "not a valid ONNX model: external data files are not accepted; embed tensors"
            )
        try:
            onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError) as exc:
            raise ValidationFailed(f"not a valid ONNX model: {exc}") from exc
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        return Detection("onnx", None, f"ONNX model, opset {opset}, IR {model.ir_version}")
    if ext == ".mlmodel":
        return Detection("coreml", "mlmodel", "Core ML model (protobuf, recognised by its name)")
    if ext == ".pb":
        return Detection("tensorflow", "graphdef", "TensorFlow protobuf (recognised by its name)")
    raise ValidationFailed(f"not a valid ONNX model: {error}")


def _uses_external_data(graph: Any) -> bool:
    import onnx

    tensors = list(graph.initializer)
    tensors += [sparse.values for sparse in graph.sparse_initializer]
    tensors += [sparse.indices for sparse in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            tensors += [attr.t, *attr.tensors]
            if any(_uses_external_data(sub) for sub in [attr.g, *attr.graphs]):
                return True
    return any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors)


def check_zip(archive: zipfile.ZipFile, size: int) -> list[str]:
    """Refuse zip bombs, encrypted members and unsafe member names; return the file member names.

    Uses only the central directory: nothing is decompressed. The total declared size may not exceed
    ``min(4 * size + 64 MiB, 20 GiB)`` and no member over 1 MiB may compress by more than 200x."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ValidationFailed(
            f"the archive has {len(infos)} members; at most {MAX_ZIP_MEMBERS} are accepted"
        )
    limit = min(4 * size + ZIP_SLACK, MAX_ZIP_UNCOMPRESSED)
    total = sum(info.file_size for info in infos)
    if total > limit:
        raise ValidationFailed(f"the archive unpacks to {total} bytes, more than the {limit} accepted")
    for info in infos:
        name = info.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts:
            raise ValidationFailed(f"the archive member {name!r} has an unsafe path")
        if info.flag_bits & 0x1:
            raise ValidationFailed(f"the archive member {name!r} is encrypted")
        if info.file_size > 1024**2 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ValidationFailed(
                f"the archive member {name!r} compresses more than {MAX_COMPRESSION_RATIO}x (a zip bomb)"
            )
    return [info.filename for info in infos if not info.is_dir()]


def _detect_zip(path: Path, size: int) -> Detection:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValidationFailed(f"not a valid zip archive: {exc}") from exc
    with archive:
        names = check_zip(archive, size)
        base = {name.rsplit("/", 1)[-1] for name in names}
        pickles = sorted(
            (n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=lambda n: n.count("/")
        )
        if pickles:
            if "constants.pkl" in base and any(n.startswith("code/") or "/code/" in n for n in names):
                return Detection("pytorch", "torchscript", f"TorchScript archive ({len(names)} entries)")
            info = archive.getinfo(pickles[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise ValidationFailed(f"the archive's {pickles[0]} is larger than {MAX_PICKLE_BYTES} bytes")
            with archive.open(info) as member:
                data = member.read(MAX_PICKLE_BYTES + 1)
            bad = disallowed_globals(scan_pickle(data))
            if bad:
                shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
                raise ValidationFailed(
                    f"the pickle references {shown}; it would run code when loaded and is refused",
                    {"globals": bad},
                )
            storages = sum(1 for n in names if "/data/" in f"/{n}" and not n.endswith(".pkl"))
            return Detection("pytorch", "weights", f"PyTorch weights (torch.save zip, {storages} storages)")
        if "config.json" in base and any(n.endswith(".weights.h5") for n in names):
            return Detection("keras", "keras_v3", "Keras v3 archive")
        if "saved_model.pb" in base or "saved_model.pbtxt" in base:
            return Detection("tensorflow", "savedmodel", "TensorFlow SavedModel (zip)")
        if "Manifest.json" in base and any("com.apple.CoreML" in n for n in names):
            return Detection("coreml", "mlpackage", "Core ML package (zip)")
    raise ValidationFailed(
        "unrecognised model format: a zip archive that is not a PyTorch, Keras, SavedModel or Core ML package"
    )
