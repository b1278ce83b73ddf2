"""The models a worker hosts: each received as a file in the worker's private directory, loaded by its
runtime in a thread, run in a thread, and removed with its file when unloaded."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import numpy as np

from aiserve_mcp.core.errors import NotFound, PayloadTooLarge, ServiceUnavailable, ValidationFailed
from aiserve_mcp.runtime.onnx_model import OnnxModel
from aiserve_mcp.runtime.torchscript_model import TorchScriptModel

_KEY: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_WRITE_CHUNK: Final = 1024**2

Model = OnnxModel | TorchScriptModel
LOADERS: Final[Mapping[str, Callable[..., Model]]] = {
    "onnx": OnnxModel.load,
    "torchscript": TorchScriptModel.load,
}


def check_format(format: str) -> str:
    """``format`` when this worker can load it; :class:`ValidationFailed` otherwise."""
    if format not in LOADERS:
        raise ValidationFailed(f"format must be one of {sorted(LOADERS)}, not {format!r}")
    return format


async def _remove(path: Path) -> None:
    """Delete ``path`` in a thread, even while the caller is being cancelled."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


def check_key(key: str) -> str:
    """``key`` when it is 1 to 100 letters, digits, ``_``, ``.`` or ``-``; :class:`ValidationFailed`
    otherwise."""
    if not _KEY.fullmatch(key):
        raise ValidationFailed("a model key is 1 to 100 letters, digits, '_', '.' or '-'")
    return key


@dataclass(frozen=True)
class HostedModel:
    key: str
    format: str
    path: Path
    model: Model

    def describe(self) -> dict[str, Any]:
        """The body the worker answers for this model."""
        return {
            "key": self.key,
            "format": self.format,
            "runtime": self.model.runtime,
            "used_gpu": self.model.used_gpu,
            "batchable": self.model.batchable,
            "inputs": [spec.to_json() for spec in self.model.inputs],
            "outputs": [spec.to_json() for spec in self.model.outputs],
        }


class WorkerModels:
    """The models loaded in this worker, by key. :meth:`open` before use, :meth:`close` at shutdown."""

    def __init__(self, *, max_model_bytes: int, threads: int | None, device: str) -> None:
        self._max_model_bytes = max_model_bytes
        self._threads = threads
        self._device = device
        self._directory: Path | None = None
        self._models: dict[str, HostedModel] = {}

    def open(self) -> None:
        """Create the private directory the model files are kept in."""
        self._directory = Path(tempfile.mkdtemp(prefix="aiserve-models-"))

    def close(self) -> None:
        """Forget every model and remove the directory with their files."""
        self._models.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __len__(self) -> int:
        return len(self._models)

    def get(self, key: str) -> HostedModel:
        """The model loaded under ``key``; :class:`NotFound` when there is none."""
        hosted = self._models.get(key)
        if hosted is None:
            raise NotFound(f"no model {key!r} is loaded on this worker")
        return hosted

    async def receive(self, chunks: AsyncIterator[bytes], declared_size: int | None) -> Path:
        """Write ``chunks`` to a new file in the private directory. :class:`PayloadTooLarge` (and no file
        left behind) when ``declared_size`` or the bytes received pass the limit."""
        if self._directory is None:
            raise ServiceUnavailable("the worker is not started")
        limit = self._max_model_bytes
        if declared_size is not None and declared_size > limit:
            raise PayloadTooLarge(f"the model file is larger than the {limit} bytes this worker accepts")
        descriptor, name = tempfile.mkstemp(dir=self._directory, suffix=".model")
        os.close(descriptor)
        path = Path(name)
        try:
            received = 0
            pending = bytearray()
            async with await anyio.open_file(path, "wb") as out:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > limit:
                        raise PayloadTooLarge(
                            f"the model file is larger than the {limit} bytes this worker accepts"
                        )
                    pending += chunk
                    if len(pending) >= _WRITE_CHUNK:
                        await out.write(bytes(pending))
                        pending.clear()
                await out.write(bytes(pending))
        except BaseException:
            await _remove(path)
            raise
        return path

    async def load(self, key: str, path: Path, format: str, *, require_gpu: bool) -> HostedModel:
        """Load the file at ``path`` (which this worker now owns) under ``key``, replacing any model there
        only once the new one has loaded. :class:`ServiceUnavailable` when ``require_gpu`` and the model
        landed on the CPU; :class:`ValidationFailed` when its runtime refuses it."""
        try:
            loader = LOADERS[check_format(format)]
            model: Model = await anyio.to_thread.run_sync(
                lambda: loader(path, prefer_gpu=True, threads=self._threads)
            )
            if require_gpu and not model.used_gpu:
                raise ServiceUnavailable(f"this worker has no GPU it can use (device: {self._device})")
        except BaseException:
            await _remove(path)
            raise
        hosted = HostedModel(key, format, path, model)
        replaced = self._models.get(key)
        self._models[key] = hosted
        if replaced is not None:
            await _remove(replaced.path)
        return hosted

    async def unload(self, key: str) -> None:
        """Forget the model under ``key`` and remove its file; :class:`NotFound` when there is none."""
        hosted = self.get(key)
        del self._models[key]
        await _remove(hosted.path)

    async def infer(self, key: str, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        """Run the model under ``key`` on prepared arrays named exactly as its inputs, in a thread;
        ``(outputs, used_gpu)``. :class:`ValidationFailed` for other names or outputs that are not
        tensors."""
        hosted = self.get(key)
        names = [spec.name for spec in hosted.model.inputs]
        if sorted(arrays) != sorted(names):
            raise ValidationFailed(
                f"the model takes inputs {names}, not {sorted(arrays)}",
                {"expected": [spec.to_json() for spec in hosted.model.inputs]},
            )
        outputs = await anyio.to_thread.run_sync(hosted.model.run, arrays)
        for name, value in outputs.items():
            if not isinstance(value, np.ndarray):
                raise ValidationFailed(f"the model's output {name!r} is not a tensor; a worker sends tensors")
        return outputs, hosted.model.used_gpu
