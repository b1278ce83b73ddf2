"""Putting a model file on the platform: one path inside (``store_model``), several ways in."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiserve_mcp.core.errors import Forbidden, ValidationFailed
from aiserve_mcp.runtime.formats import FORMATS, detect, servability
from aiserve_mcp.tools.common import Input, Merged, Text
from aiserve_mcp.tools.models import BATCH_DOC, DELAY_DOC, MAX_REPLICAS, REPLICAS_DOC, check_replicas
from aiserve_mcp.tools.ports import ServingPort
from aiserve_mcp.tools.registry import Annotations, Surface, ToolContext, tool


class UploadFields(Input):
    """The form fields of an upload. They arrive as text, so numbers and booleans are read from it."""

    name: Text | None = Field(default=None, min_length=1, max_length=200)
    format: str | None = Field(
        default=None,
        description="A hint: the bytes decide, and must show this format.",
        json_schema_extra={"enum": [f.id for f in FORMATS]},
    )
    framework: Text | None = Field(default=None, max_length=64)
    version: Text = Field(default="1.0.0", min_length=1, max_length=64)
    gpu_required: bool = False
    gpu_type: Text | None = Field(default=None, max_length=64)
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS, description=REPLICAS_DOC)
    max_batch_size: int | None = Field(default=None, ge=1, le=4096, description=BATCH_DOC)
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=1000, description=DELAY_DOC)


class UploadOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model_id: str = Field(validation_alias="id")
    name: str
    format: str
    endpoint: str
    status: str
    message: str


def _safe_name(filename: str | None) -> str:
    """The last component of a client's file name, for display only (never a path)."""
    base = (filename or "model").replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(c for c in base if c.isprintable()).strip()  # no NUL or control characters
    return printable[:200] or "model"


async def store_model(
    ctx: ToolContext[ServingPort], fields: UploadFields, chunks: AsyncIterator[bytes], filename: str | None
) -> UploadOutput:
    """Store the caller's model file, read from ``chunks``, under their quota and the file-size limit, then
    start loading it. Every way in (REST multipart, an upload link, a URL, inline bytes, a local path) ends
    here, so each is held to the same quota, upload rate, size limit, format detection and pickle rules.
    ``filename`` is the client's name for the file: a hint to the format, shown, never a path."""
    caller = ctx.caller()
    check_replicas(ctx, fields.replicas)
    store = ctx.services.model_store
    quota = await store.admit(caller.user_id)
    received = await store.receive(caller.user_id, chunks, quota.limit_bytes - quota.used_bytes)
    try:
        if received.size_bytes == 0:
            raise ValidationFailed("the model file is empty")
        found = await anyio.to_thread.run_sync(lambda: detect(received.path, filename, fields.format))
    except BaseException:
        await anyio.to_thread.run_sync(lambda: received.path.unlink(missing_ok=True))
        raise
    serving = servability(found.format, found.variant)
    framework = fields.framework or next(f.framework for f in FORMATS if f.id == found.format)
    model = await store.add(
        caller.user_id,
        received,
        name=fields.name or _safe_name(filename),
        format=found.format,
        variant=found.variant,
        framework=framework,
        version=fields.version,
        status="loading" if serving.servable else "stored",
        status_reason=None if serving.servable else serving.reason,
        filename=_safe_name(filename),
        gpu_required=fields.gpu_required,
        gpu_type=fields.gpu_type,
        replicas=fields.replicas,
        max_batch_size=fields.max_batch_size,
        max_queue_delay_ms=fields.max_queue_delay_ms,
    )
    if serving.servable:
        ctx.services.model_host.start_loading(model)
    message = (
        "Model uploaded successfully and loading"
        if serving.servable
        else f"Model stored; it cannot be served here: {serving.reason}"
    )
    return UploadOutput.model_validate(
        Merged(model, endpoint=f"/api/v1/models/{model.id}/predict", message=message)
    )


INLINE_MAX_BYTES = 2 * 1024 * 1024
"""The most a model may weigh as ``content_base64`` (decoded): its base64 must fit in one request body
(``AISERVE_MAX_REQUEST_BODY_BYTES``, 4 MiB by default)."""
FILE_CHUNK_BYTES = 1024 * 1024
PROGRESS_EVERY_BYTES = 4 * 1024 * 1024
OTHER_WAYS = (
    "give a 'url' the server can download, or call create_model_upload for a one-time upload link (any "
    "size), or, with 'aiserve mcp' on your own machine, a local 'path'"
)


class UploadModelInput(UploadFields):
    """One model file, from exactly one of url, content_base64 or path, and the settings it is served with."""

    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^[hH][tT][tT][pP][sS]?://",
        description="An http(s) URL the server downloads the file from (public addresses only, unless the "
        "operator allowed the host; redirects are checked too).",
    )
    content_base64: str | None = Field(
        default=None,
        description=f"The file itself, base64-encoded; at most {INLINE_MAX_BYTES // 2**20} MiB decoded.",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A file on the server's own machine: only with 'aiserve mcp' (stdio), which runs as you.",
    )
    filename: Text | None = Field(
        default=None,
        max_length=200,
        description="The file's name, a hint to its format (e.g. model.onnx), for content_base64.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> UploadModelInput:
        given = [name for name in ("url", "content_base64", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of url, content_base64 or path (got {', '.join(given) or 'none'})"
            )
        return self

    @field_validator("content_base64")
    @classmethod
    def _inline_size(cls, value: str | None) -> str | None:
        if value is not None and len(value) > 4 * (-(-INLINE_MAX_BYTES // 3)):
            raise ValueError(f"inline content is limited to {INLINE_MAX_BYTES} bytes decoded: {OTHER_WAYS}")
        return value


async def _counted(
    ctx: ToolContext[ServingPort], chunks: AsyncIterator[bytes], total: int | None
) -> AsyncIterator[bytes]:
    """``chunks`` as they come, telling the caller how far the transfer got (every few MiB)."""
    done, told = 0, 0
    async for chunk in chunks:
        done += len(chunk)
        if done - told >= PROGRESS_EVERY_BYTES:
            told = done
            await ctx.report(done, total, f"received {done} bytes")
        yield chunk
    await ctx.report(done, total, f"received {done} bytes; checking the file")


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as source:
        while chunk := await source.read(FILE_CHUNK_BYTES):
            yield chunk


def _inline(content: str) -> bytes:
    try:
        data = base64.b64decode(content, validate=True)
    except binascii.Error:
        raise ValidationFailed(
            "content_base64 is not valid base64", {"fields": [{"field": "content_base64"}]}
        ) from None
    if len(data) > INLINE_MAX_BYTES:
        raise ValidationFailed(f"inline content is limited to {INLINE_MAX_BYTES} bytes decoded: {OTHER_WAYS}")
    return data


async def _local_file(ctx: ToolContext[ServingPort], name: str) -> Path:
    if ctx.surface is not Surface.STDIO:
        raise Forbidden(
            "'path' reads a file on the server's machine, which only 'aiserve mcp' (stdio, running as you) "
            "may do; over the network give a 'url' or content_base64, or call create_model_upload"
        )
    path = await anyio.Path(name).expanduser()
    if not await path.is_file():
        raise ValidationFailed(f"no such file: {name}", {"fields": [{"field": "path"}]})
    return Path(await path.resolve())


@tool(
    scope="models:write",
    annotations=Annotations("Upload model", read_only=False, idempotent=False, open_world=True),
)
async def upload_model(ctx: ToolContext[ServingPort], args: UploadModelInput) -> UploadOutput:
    """Put a model file on the platform and start loading it; predict with it once get_model says ready.

    Give the file exactly one way:
    - url: an http(s) address the server downloads from (a model hub, a bucket, a release asset). Best for
      any file that is already online; progress is reported while it downloads.
    - content_base64: the bytes themselves, for small files (at most 2 MiB decoded); add filename
      (e.g. model.onnx) as a format hint.
    - path: a file on this machine, only when you run through 'aiserve mcp' (stdio) on the user's computer.
    For a larger file on the user's computer (or any file you cannot send yourself), call
    create_model_upload instead: it returns a one-time link and the curl command that sends the file.

    The format is read from the bytes (ONNX, TorchScript, safetensors, pickles...); pickles are never
    loaded. The upload counts against your storage quota and hourly/daily upload limits."""
    if args.url is not None:
        async with ctx.services.model_fetcher.download(args.url) as download:
            chunks = _counted(ctx, download.chunks(), download.total_bytes)
            return await store_model(ctx, args, chunks, download.filename)
    if args.content_base64 is not None:
        return await store_model(ctx, args, _once(_inline(args.content_base64)), args.filename)
    assert args.path is not None
    path = await _local_file(ctx, args.path)
    size = (await anyio.Path(path).stat()).st_size
    return await store_model(ctx, args, _counted(ctx, _file_chunks(path), size), args.filename or path.name)
