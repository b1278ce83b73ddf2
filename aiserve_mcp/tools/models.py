"""Model serving: list, inspect, configure, delete, predict, metrics, formats and quota (uploads are in
``uploads``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from aiserve_mcp.core.errors import Conflict, ValidationFailed
from aiserve_mcp.runtime.formats import FORMATS, servability
from aiserve_mcp.runtime.tensors import to_python
from aiserve_mcp.tools.common import Input, IntegerNumber, Merged, NoInput, Text
from aiserve_mcp.tools.ports import NoPorts, ServingPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

REPLICAS_DOC = "Copies of the model serving requests in parallel (at most AISERVE_MODEL_MAX_REPLICAS)."
MAX_REPLICAS = 64  # the highest AISERVE_MODEL_MAX_REPLICAS a server accepts
BATCH_DOC = "Most rows one batched run carries (default AISERVE_MODEL_MAX_BATCH); 1 turns batching off."
DELAY_DOC = "How long an idle replica may wait for a batch to fill, in ms; 0 (default) never waits."


def check_replicas(ctx: ToolContext[ServingPort], replicas: int | None) -> None:
    ceiling = ctx.services.settings.model_max_replicas
    if replicas is not None and replicas > ceiling:
        raise ValidationFailed(
            f"replicas must be at most {ceiling} on this server (AISERVE_MODEL_MAX_REPLICAS)"
        )


class ModelSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: str
    status: str = Field(description="loading, ready, failed, or stored (kept but not servable here).")
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelSummary]
    count: int


@tool(scope="models:read", annotations=Annotations("My models"))
async def list_models(ctx: ToolContext[ServingPort], args: NoInput) -> ModelList:
    """Your uploaded models, newest first, with their format and status."""
    rows = await ctx.services.model_store.list_for(ctx.caller().user_id)
    return ModelList(models=[ModelSummary.model_validate(r) for r in rows], count=len(rows))


class ModelRef(Input):
    model_id: Text = Field(min_length=1, max_length=36)


class ModelDetails(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # a model's row and what this server measured of it

    id: str
    name: str
    format: str
    variant: str | None
    version: str
    framework: str | None
    status: str
    status_reason: str | None = Field(description="Why it is failed or not servable, and what would fix it.")
    replicas: int
    max_batch_size: int | None = Field(description="null: the server's default (AISERVE_MODEL_MAX_BATCH).")
    max_queue_delay_ms: float
    total_requests: int
    average_latency: float | None = Field(validation_alias="average_ms")
    error_rate: float
    size_bytes: int
    sha256: str
    gpu_required: bool
    signature: dict[str, Any] | None = Field(
        description="Inputs and outputs: name, dtype, shape (null: any)."
    )
    created_at: datetime
    updated_at: datetime


@tool(scope="models:read", annotations=Annotations("Model details"))
async def get_model(ctx: ToolContext[ServingPort], args: ModelRef) -> ModelDetails:
    """One of your models: status (with the reason when it cannot serve), its input/output signature and
    measured request totals."""
    row = await ctx.services.model_store.owned(ctx.caller().user_id, args.model_id)
    return ModelDetails.model_validate(Merged(row, ctx.services.model_host.metrics(row.id)))


class Message(BaseModel):
    message: str


@tool(scope="models:write", annotations=Annotations("Delete model", read_only=False, destructive=True))
async def delete_model(ctx: ToolContext[ServingPort], args: ModelRef) -> Message:
    """Delete one of your models: its file is removed and its storage returns to your quota."""
    row = await ctx.services.model_store.owned(ctx.caller().user_id, args.model_id)
    await ctx.services.model_host.forget(row.id)
    await ctx.services.model_store.delete(row)
    return Message(message="Model deleted successfully")


class ServingSettings(ModelRef):
    replicas: Annotated[int, IntegerNumber(ge=1, le=MAX_REPLICAS)] | None = Field(
        default=None, description=REPLICAS_DOC
    )
    max_batch_size: Annotated[int, IntegerNumber(ge=1, le=4096)] | None = Field(
        default=None, description=BATCH_DOC
    )
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=1000, strict=True, description=DELAY_DOC)
    gpu_required: bool | None = Field(
        default=None,
        strict=True,
        description="Run only on a GPU: this host's, or your rented GPU instances'.",
    )


@tool(
    scope="models:write", annotations=Annotations("Configure model serving", read_only=False, idempotent=True)
)
async def configure_model(ctx: ToolContext[ServingPort], args: ServingSettings) -> ModelDetails:
    """Change how one of your models is served: replicas, batching (max_batch_size, max_queue_delay_ms) or
    gpu_required. Fields left out keep their value. The model is redeployed in the background: its status is
    'loading' until the new replicas answer, then 'ready' (or 'failed' with the reason)."""
    row = await ctx.services.model_store.owned(ctx.caller().user_id, args.model_id)
    check_replicas(ctx, args.replicas)
    changes = args.model_dump(exclude={"model_id"}, exclude_none=True)
    if row.status == "loading":
        raise Conflict("the model is still loading; change its serving settings once it is ready or failed")
    if row.status in ("ready", "failed") and changes:
        await ctx.services.model_host.forget(row.id)
        row = await ctx.services.model_store.update(row.id, status="loading", status_reason=None, **changes)
        ctx.services.model_host.start_loading(row)
    elif changes:
        row = await ctx.services.model_store.update(row.id, **changes)
    return await get_model(ctx, ModelRef(model_id=row.id))


class PredictInput(ModelRef):
    tensor_fields = frozenset({"inputs"})

    inputs: dict[str, Any] = Field(
        min_length=1,
        description="Input name -> nested list of any shape; a one-input model also takes "
        "{'features': [...]}.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Accepted and echoed; unused by ONNX."
    )


class PredictOutput(BaseModel):
    model_id: str
    outputs: dict[str, Any] = Field(description="Output name -> nested list (the runtime's arrays).")
    latency_ms: float
    metadata: dict[str, Any]

    @field_serializer("outputs", when_used="json")
    def _as_lists(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {name: to_python(value) for name, value in outputs.items()}


@tool(scope="models:read", annotations=Annotations("Run inference", read_only=False, idempotent=True))
async def predict(ctx: ToolContext[ServingPort], args: PredictInput) -> PredictOutput:
    """Run one of your ready models. Inputs are checked against its signature (names, dtypes, shapes;
    VALIDATION_ERROR says what was expected); outputs map the model's output names to nested lists.
    metadata.used_gpu is true only when it really ran on a GPU."""
    row = await ctx.services.model_store.owned(ctx.caller().user_id, args.model_id)
    result = await ctx.services.model_host.predict(row, args.inputs)
    return PredictOutput(
        model_id=row.id,
        outputs=result.outputs,
        latency_ms=result.latency_ms,
        metadata={
            "format": row.format,
            "runtime": result.runtime,
            "version": row.version,
            "used_gpu": result.used_gpu,
        },
    )


class MetricsOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # a model's row and what this server measured of it

    model_id: str = Field(validation_alias="id")
    name: str
    total_requests: int
    average_latency: float | None = Field(validation_alias="average_ms")
    p50_latency: float | None = Field(validation_alias="p50_ms")
    p95_latency: float | None = Field(validation_alias="p95_ms")
    p99_latency: float | None = Field(validation_alias="p99_ms")
    error_rate: float
    status: str
    replicas: int


@tool(scope="models:read", annotations=Annotations("Model metrics"))
async def get_model_metrics(ctx: ToolContext[ServingPort], args: ModelRef) -> MetricsOutput:
    """Measured prediction metrics of one of your models on this server: requests, error rate, and
    average/p50/p95/p99 latency in ms over the latest 10,000 predictions (null before the first)."""
    row = await ctx.services.model_store.owned(ctx.caller().user_id, args.model_id)
    return MetricsOutput.model_validate(Merged(row, ctx.services.model_host.metrics(row.id)))


class FormatOut(BaseModel):
    format: str
    extensions: list[str]
    framework: str
    description: str
    servable: bool = Field(description="Whether this server can run models of this format now.")
    reason: str = Field(description="When not servable: why, and what would make it so.")


class FormatList(BaseModel):
    formats: list[FormatOut]
    count: int


@tool(scope=None, annotations=Annotations("Model formats"))
async def list_model_formats(ctx: ToolContext[NoPorts], args: NoInput) -> FormatList:
    """The 13 model formats this platform recognises, with extensions and framework, and whether this
    server can serve each one now (formats are detected from file contents, not names)."""
    formats = []
    for f in FORMATS:
        serving = servability(f.id, "torchscript" if f.id == "pytorch" else None)
        formats.append(
            FormatOut(
                format=f.id,
                extensions=list(f.extensions),
                framework=f.framework,
                description=f.description,
                servable=serving.servable,
                reason=serving.reason,
            )
        )
    return FormatList(formats=formats, count=len(formats))


class StorageQuota(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    used_bytes: int
    limit_bytes: int
    used_pct: float


class FileSizeQuota(BaseModel):
    max_bytes: int


class UploadRateQuota(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    uploads_last_hour: int
    hourly_limit: int
    uploads_last_day: int
    daily_limit: int


class QuotaOutput(BaseModel):
    user_id: str
    storage: StorageQuota
    file_size: FileSizeQuota
    rate_limits: UploadRateQuota


async def quota_of(ctx: ToolContext[ServingPort], user_id: str) -> QuotaOutput:
    """``user_id``'s model storage and upload quota, as ``get_quota`` and the account export show it."""
    quota = await ctx.services.model_store.quota(user_id)
    used_pct = round(quota.used_bytes / quota.limit_bytes * 100, 2)
    return QuotaOutput(
        user_id=user_id,
        storage=StorageQuota.model_validate(Merged(quota, used_pct=used_pct)),
        file_size=FileSizeQuota(max_bytes=quota.max_file_bytes),
        rate_limits=UploadRateQuota.model_validate(quota),
    )


@tool(scope="models:read", annotations=Annotations("Storage quota"))
async def get_quota(ctx: ToolContext[ServingPort], args: NoInput) -> QuotaOutput:
    """Your model storage: bytes used and allowed (whole bytes), the largest file accepted, and uploads in
    the last hour and day against their limits."""
    return await quota_of(ctx, ctx.caller().user_id)
