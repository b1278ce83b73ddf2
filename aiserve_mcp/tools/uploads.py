"""Putting a model file on the platform: one path inside (``store_model``), several ways in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from pydantic import BaseModel, ConfigDict, Field

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.runtime.formats import FORMATS, detect, servability
from aiserve_mcp.tools.common import Input, Merged, Text
from aiserve_mcp.tools.models import BATCH_DOC, DELAY_DOC, MAX_REPLICAS, REPLICAS_DOC, check_replicas
from aiserve_mcp.tools.ports import ServingPort
from aiserve_mcp.tools.registry import ToolContext


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
