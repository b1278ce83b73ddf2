"""``PUT /api/v1/models/uploads/{token}``: the body of one request, stored as a model through a one-time
upload link (made by the ``create_model_upload`` tool).

The token in the path is the credential: no Authorization header is needed, and HTTP admission rate
limits the request by the caller's address like any anonymous one. The link is spent first, then the body
is streamed to disk (never held whole in memory; ``AISERVE_MAX_REQUEST_BODY_BYTES`` does not apply, the
link's size does) and stored for the link's owner exactly as a REST upload of theirs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from aiserve_mcp.core.errors import AiserveError, AuthInvalid, PayloadTooLarge, ValidationFailed
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.prelude import error_response, services_of, tool_context
from aiserve_mcp.rest_compat.uploads import SCOPE
from aiserve_mcp.tools.registry import Surface
from aiserve_mcp.tools.upload_links import UPLOAD_LINK_PATH
from aiserve_mcp.tools.uploads import UploadFields, store_model

LINK_PREFIX = UPLOAD_LINK_PATH.removesuffix("{token}")


class HideLinkTokens(logging.Filter):
    """Keeps upload-link tokens (credentials) out of the access log: uvicorn's access records carry the
    request's path as their third argument, and a link's token becomes ``<token>`` there."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 3 and isinstance(args[2], str) and args[2].startswith(LINK_PREFIX):
            record.args = (*args[:2], LINK_PREFIX + "<token>", *args[3:])
        return True


HIDE_LINK_TOKENS = HideLinkTokens()


def _check_declared(request: Request, size_bytes: int) -> None:
    """Refuse at once a ``Content-Length`` other than the link's size."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return
    if int(declared) > size_bytes:
        raise PayloadTooLarge(f"this upload link takes exactly {size_bytes} bytes; the body has {declared}")
    if int(declared) < size_bytes:
        raise ValidationFailed(f"this upload link takes exactly {size_bytes} bytes; the body has {declared}")


async def _exactly(request: Request, size_bytes: int) -> AsyncIterator[bytes]:
    """The request body, refused past ``size_bytes`` (413) or when it ends short of it (400)."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > size_bytes:
            raise PayloadTooLarge(f"this upload link takes exactly {size_bytes} bytes; the body is larger")
        if chunk:
            yield chunk
    if seen < size_bytes:
        raise ValidationFailed(
            f"this upload link takes exactly {size_bytes} bytes; the body ended after {seen}"
        )


async def link_upload(request: Request) -> Response:
    try:
        link = await services_of(request.scope).upload_links.claim(request.path_params["token"])
        _check_declared(request, link.size_bytes)
        owner = await services_of(request.scope).accounts.get_user(link.user_id)
        if not owner.is_active:
            raise AuthInvalid("the account that made this upload link is disabled")
        # The link's holder acts as its owner for this one upload, and for nothing else.
        principal = Principal(owner.id, owner.email, False, "jwt", scopes=frozenset({SCOPE}))
        ctx = dataclasses.replace(tool_context(request.scope, Surface.REST), principal=principal)
        fields = UploadFields.model_validate(link.fields)
        out = await store_model(ctx, fields, _exactly(request, link.size_bytes), None)
    except AiserveError as exc:
        return error_response(exc)
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")
