"""The "Models" pages: the person's models with their status, uploading a model file, and one model's
details and measured metrics with a latency chart drawn on the server (inline SVG, no script needed).

An upload is a plain multipart form posted here, guarded by the CSRF token like every console form. Its
body is refused past the server's file-size limit (plus room for the other fields) and the file is streamed
to ``store_model``, the one path every upload takes, under the ``upload_model`` tool's scope: the same
quota, upload rate, size limit, format detection and pickle rules as the API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.web import (
    CONSOLE,
    CsrfRefused,
    act,
    checked_form,
    person,
    render,
    secured,
    see_other,
)
from aiserve_mcp.core.errors import AiserveError, PayloadTooLarge, ValidationFailed, kind_of
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.prelude import limited_receive, services_of, tool_context
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.models import MetricsOutput, ModelDetails, ModelList, QuotaOutput
from aiserve_mcp.tools.registry import Surface
from aiserve_mcp.tools.runner import validation_details
from aiserve_mcp.tools.uploads import UploadFields, store_model

MODELS: Final = f"{CONSOLE}/models"
NOTICES: Final = {
    "uploaded": "Model uploaded: it loads in the background, and this page shows when it is ready.",
    "deleted": "Model deleted; its storage is back in your quota.",
}
FORM_OVERHEAD_BYTES: Final = 64 * 1024
"""Room for the upload form's other fields and its multipart framing, on top of the file-size limit."""
CHUNK_BYTES: Final = 1024 * 1024
SIZE_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")
UPLOAD_FIELDS: Final = ("name", "version")
"""The upload form's fields besides the file (and the CSRF token)."""

# The latency chart's geometry, in SVG user units: a label column, then one bar per measure.
CHART_WIDTH: Final = 600
LABEL_WIDTH: Final = 80
VALUE_ROOM: Final = 110
ROW_HEIGHT: Final = 34
BAR_HEIGHT: Final = 22
CHART_PAD: Final = 6


@dataclass(frozen=True)
class Bar:
    label: str
    ms: float
    y: int
    width: float


@dataclass(frozen=True)
class Chart:
    """A horizontal bar chart of latency measures, laid out for the template's ``<svg>``."""

    bars: list[Bar]
    height: int
    width: int = CHART_WIDTH
    bar_x: int = LABEL_WIDTH
    bar_height: int = BAR_HEIGHT


def latency_chart(metrics: MetricsOutput) -> Chart | None:
    """The average, p50, p95 and p99 latencies as bars scaled to the largest; ``None`` before the first
    prediction."""
    measures = [
        ("average", metrics.average_latency),
        ("p50", metrics.p50_latency),
        ("p95", metrics.p95_latency),
        ("p99", metrics.p99_latency),
    ]
    measured = [(label, ms) for label, ms in measures if ms is not None]
    if not measured:
        return None
    top = max(ms for _, ms in measured) or 1.0
    room = CHART_WIDTH - LABEL_WIDTH - VALUE_ROOM
    bars = [
        Bar(label, ms, CHART_PAD + i * ROW_HEIGHT, max(1.0, round(ms / top * room, 1)))
        for i, (label, ms) in enumerate(measured)
    ]
    return Chart(bars, height=2 * CHART_PAD + len(bars) * ROW_HEIGHT)


def size(n: int) -> str:
    """A byte count to read: ``512 B``, ``1.5 KiB``, ``10.0 GiB``."""
    exponent = min(len(SIZE_UNITS) - 1, (n.bit_length() - 1) // 10) if n > 0 else 0
    return f"{n} B" if exponent == 0 else f"{n / 1024**exponent:.1f} {SIZE_UNITS[exponent]}"


async def _list_page(
    request: Request, principal: Principal, context: dict[str, Any], status: int = 200
) -> Response:
    listed = await act(request, principal, "list_models", {})
    assert isinstance(listed, ModelList)
    quota = await act(request, principal, "get_quota", {})
    assert isinstance(quota, QuotaOutput)
    storage = {"used": size(quota.storage.used_bytes), "limit": size(quota.storage.limit_bytes)}
    full = {
        "user": principal,
        "models": listed.models,
        "quota": quota,
        "storage": storage,
        "max_file": size(quota.file_size.max_bytes),
        **context,
    }
    return await render(request, "models.html", full, status=status)


async def models_page(request: Request) -> Response:
    """``GET``: the person's models with their status, their storage quota and the upload form."""
    principal = await person(request)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return await _list_page(request, principal, {"notice": notice})


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


def _upload_fields(form: FormData) -> UploadFields:
    values = {k: v.strip() for k in UPLOAD_FIELDS if isinstance(v := form.get(k), str) and v.strip()}
    try:
        return UploadFields.model_validate(values)
    except ValidationError as exc:
        first = validation_details(exc)["fields"][0]
        raise ValidationFailed(f"{first['field']}: {first['message']}", validation_details(exc)) from None


async def upload(request: Request) -> Response:
    """``POST`` (multipart: ``model`` the file, optional ``name`` and ``version``): store the model and go
    to its page."""
    principal = await person(request)
    limit = services_of(request.scope).settings.model_max_file_bytes + FORM_OVERHEAD_BYTES
    too_large = f"the upload is larger than this server accepts ({size(limit)})"
    body = Request(request.scope, limited_receive(request.receive, limit, too_large))
    try:
        REGISTRY.get("upload_model").authorize(principal)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(too_large)
        form = await checked_form(body)
        file = form.get("model")
        if not isinstance(file, UploadFile) or not file.filename:
            raise ValidationFailed("choose the model file to upload", {"field": "model"})
        ctx = dataclasses.replace(tool_context(request.scope, Surface.CONSOLE), principal=principal)
        stored = await store_model(ctx, _upload_fields(form), _chunks(file), file.filename)
    except CsrfRefused:
        raise
    except AiserveError as exc:
        return await _list_page(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    except HTTPException as exc:  # a malformed multipart body
        return await _list_page(request, principal, {"error": f"malformed upload: {exc.detail}"}, 400)
    finally:
        await body.close()  # the parsed form's temporary files
    return secured(see_other(f"{MODELS}/{stored.model_id}?notice=uploaded"))


async def model_page(request: Request) -> Response:
    """``GET``: one model's status, signature and metrics, with its latency chart."""
    principal = await person(request)
    ref = {"model_id": request.path_params["model_id"]}
    try:
        details = await act(request, principal, "get_model", ref)
        metrics = await act(request, principal, "get_model_metrics", ref)
    except AiserveError as exc:
        return await _list_page(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    assert isinstance(details, ModelDetails) and isinstance(metrics, MetricsOutput)
    context = {
        "user": principal,
        "model": details,
        "metrics": metrics,
        "chart": latency_chart(metrics),
        "size": size(details.size_bytes),
        "notice": NOTICES.get(request.query_params.get("notice", "")),
    }
    return await render(request, "model.html", context)


async def delete(request: Request) -> Response:
    """``POST``: delete the model through ``delete_model`` and go back to the list."""
    principal = await person(request)
    await checked_form(request)
    try:
        await act(request, principal, "delete_model", {"model_id": request.path_params["model_id"]})
    except AiserveError as exc:
        return await _list_page(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    return secured(see_other(f"{MODELS}?notice=deleted"))


routes = [
    Route(MODELS, models_page, methods=["GET"]),
    Route(MODELS, upload, methods=["POST"]),
    Route(f"{MODELS}/{{model_id}}", model_page, methods=["GET"]),
    Route(f"{MODELS}/{{model_id}}/delete", delete, methods=["POST"]),
]
