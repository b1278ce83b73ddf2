"""Small helpers every HTTP adapter shares: error responses, the caller, the client address, JSON bodies."""

from __future__ import annotations

from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope

from aiserve_mcp.core.errors import (
    AiserveError,
    PayloadTooLarge,
    ValidationFailed,
    error_body,
    error_headers,
    kind_of,
)
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.tools.ports import Ports


def error_response(error: AiserveError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(error),
        status_code=kind_of(error).http_status,
        headers={**error_headers(error), **(headers or {})},
    )


def services_of(scope: Scope) -> Ports:
    services = scope["app"].state.services
    return cast(Ports, services)


def principal_of(scope: Scope) -> Principal | None:
    principal = scope.get("state", {}).get("principal")
    return principal if isinstance(principal, Principal) else None


def client_address(scope: Scope, trust_forwarded_for: bool) -> str | None:
    """The caller's address; ``X-Forwarded-For`` only counts when the operator says a proxy sets it."""
    if trust_forwarded_for:
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                return value.decode("latin-1").split(",")[0].strip() or None
    client = scope.get("client")
    return client[0] if client else None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refusing bodies over ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return bytes(body)


async def read_json_object(request: Request, limit: int, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over ``limit`` bytes. An empty (or blank) body
    is refused when ``required``, else read as ``{}``."""
    body = await read_body(request, limit)
    if not body.strip():
        if required:
            raise ValidationFailed("this request needs a JSON object body ({} takes every default)")
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationFailed("request body must be a JSON object")
    return data


def replay_body(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a request whose body was read already: the body, then the client's own messages
    (disconnects, which end streamed answers)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
