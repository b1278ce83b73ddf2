"""``POST /api/v1/models/upload``: a multipart upload streamed to disk, never held whole in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from aiserve_mcp.core.errors import AiserveError, ValidationFailed
from aiserve_mcp.protocols.prelude import (
    error_response,
    limited_receive,
    principal_of,
    services_of,
    tool_context,
)
from aiserve_mcp.tools.registry import Surface, authorize
from aiserve_mcp.tools.runner import validation_details
from aiserve_mcp.tools.uploads import UploadFields, store_model

UPLOAD_PATH = "/api/v1/models/upload"
SCOPE = "models:write"
FORM_OVERHEAD_BYTES = 1024 * 1024
CHUNK_BYTES = 1024 * 1024
MULTIPART_ONLY = "send the model as multipart/form-data with the file in the 'model' field"


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


async def model_upload(request: Request) -> Response:
    form = None
    try:
        authorize(principal_of(request.scope), "upload_model", SCOPE)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ValidationFailed(MULTIPART_ONLY)
        limit = services_of(request.scope).settings.model_max_file_bytes + FORM_OVERHEAD_BYTES
        body = Request(
            request.scope, limited_receive(request.receive, limit, f"the upload is larger than {limit} bytes")
        )
        parser = MultiPartParser(request.headers, body.stream(), max_files=1, max_fields=10)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ValidationFailed(f"malformed upload: {exc.message}") from None
        upload = form.get("model")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("the 'model' field must be the model file")
        values = {k: v for k, v in form.multi_items() if k != "model" and isinstance(v, str)}
        try:
            fields = UploadFields.model_validate(values)
        except ValidationError as exc:
            raise ValidationFailed("invalid upload fields", validation_details(exc)) from None
        out = await store_model(
            tool_context(request.scope, Surface.REST), fields, _chunks(upload), upload.filename
        )
    except AiserveError as exc:
        return error_response(exc)
    finally:
        if form is not None:
            await form.close()
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")
