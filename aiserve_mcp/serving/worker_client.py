"""The API server's client of a model worker (``aiserve worker``): load a model file into it, describe,
run and unload it. The worker's answers become this platform's errors; redirects are never followed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx
import numpy as np

from aiserve_mcp.core.errors import (
    AiserveError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from aiserve_mcp.runtime.tensors import TensorSpec
from aiserve_mcp.runtime.wire import decode_arrays, encode_arrays
from aiserve_mcp.worker.models import check_key

UPLOAD_CHUNK_BYTES: Final = 1024**2


@dataclass(frozen=True)
class WorkerModelInfo:
    """What a worker says about a model it has loaded."""

    key: str
    format: str
    runtime: str
    used_gpu: bool
    batchable: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_json(cls, body: Any) -> WorkerModelInfo:
        """The info in a worker's describe body; :class:`UpstreamFailed` when it is malformed."""
        try:
            return cls(
                key=str(body["key"]),
                format=str(body["format"]),
                runtime=str(body["runtime"]),
                used_gpu=bool(body["used_gpu"]),
                batchable=bool(body["batchable"]),
                inputs=tuple(TensorSpec.from_json(spec) for spec in body["inputs"]),
                outputs=tuple(TensorSpec.from_json(spec) for spec in body["outputs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamFailed(f"the model worker sent a malformed model description: {exc!r}") from exc


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as fh:
        while chunk := await fh.read(UPLOAD_CHUNK_BYTES):
            yield chunk


def _error(response: httpx.Response) -> AiserveError:
    """The platform error for a worker's non-2xx answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    status = response.status_code
    message = body.get("error")
    if not isinstance(message, str):
        message = f"the model worker answered HTTP {status}"
    details = body.get("details")
    details = details if isinstance(details, dict) else None
    if status == 400:
        return ValidationFailed(message, details)
    if status == 404:
        return NotFound(message)
    if status == 413:
        return PayloadTooLarge(message)
    if status == 503:
        return ServiceUnavailable(message)
    return UpstreamFailed(f"the model worker failed (HTTP {status}): {message}", {"status": status})


class WorkerClient:
    """Calls one worker at ``endpoint`` with its bearer ``token``; ``timeout_s`` applies to each network
    wait (connect, each read or write), not to a whole upload."""

    def __init__(self, client: httpx.AsyncClient, endpoint: str, token: str | None, timeout_s: float) -> None:
        self._client = client
        self._endpoint = endpoint.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout_s)

    def _url(self, key: str, suffix: str = "") -> str:
        """The URL of a model route; :class:`ValidationFailed` for a key the worker would refuse."""
        return f"{self._endpoint}/models/{quote(check_key(key), safe='')}{suffix}"

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: AsyncIterator[bytes] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request and return the worker's JSON answer, or raise the platform error for it."""
        request = self._client.build_request(
            method,
            url,
            params=params,
            headers={**self._headers, **(headers or {})},
            content=content,
            json=body,
            timeout=self._timeout,
        )
        try:
            response = await self._client.send(request, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the model worker did not answer in time: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise UpstreamFailed(f"the model worker cannot be reached: {exc!r}") from exc
        if not response.is_success:
            raise _error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamFailed("the model worker answered something that is not JSON") from exc

    async def describe(self, key: str) -> WorkerModelInfo | None:
        """The model loaded under ``key``, or None when the worker has none."""
        try:
            return WorkerModelInfo.from_json(await self._call("GET", self._url(key)))
        except NotFound:
            return None

    async def load(self, key: str, path: Path, format: str, require_gpu: bool) -> WorkerModelInfo:
        """Stream the file at ``path`` to the worker and load it under ``key`` as ``format`` (``onnx`` or
        ``torchscript``), replacing any model there. :class:`ServiceUnavailable` when ``require_gpu`` and
        the worker has no usable GPU; :class:`ValidationFailed` when its runtime refuses the file."""
        size = (await anyio.Path(path).stat()).st_size
        answer = await self._call(
            "PUT",
            self._url(key),
            params={"format": format, "require_gpu": "true" if require_gpu else "false"},
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            content=_file_chunks(path),
        )
        return WorkerModelInfo.from_json(answer)

    async def infer(self, key: str, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        """Run the model under ``key`` on prepared ``arrays``; ``(outputs by name, whether a GPU ran it)``."""
        answer = await self._call("POST", self._url(key, "/infer"), body={"inputs": encode_arrays(arrays)})
        try:
            return decode_arrays(answer["outputs"]), bool(answer["used_gpu"])
        except (KeyError, TypeError, ValidationFailed) as exc:
            raise UpstreamFailed(f"the model worker sent a malformed answer: {exc}") from exc

    async def unload(self, key: str) -> None:
        """Unload the model under ``key``; nothing to do when the worker has none."""
        try:
            await self._call("DELETE", self._url(key))
        except NotFound:
            return
