"""What every HTTP adapter shares: error responses, the caller and its address, the tool context of a
request, request bodies, the guard in front of the agent protocols, and watching a response start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from aiserve_mcp.core.errors import (
    AiserveError,
    AuthRequired,
    PayloadTooLarge,
    ValidationFailed,
    error_body,
    error_headers,
    kind_of,
)
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.tools.ports import Ports
from aiserve_mcp.tools.registry import Surface, ToolContext

BodyHandler = Callable[[Scope, bytes, Receive, Send], Awaitable[None]]


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


def tool_context(scope: Scope, surface: Surface) -> ToolContext:
    """The context of a tool called by the request of ``scope`` on ``surface``: the app's services, the
    caller the admission layer authenticated (``None``: anonymous) and the caller's address."""
    services = services_of(scope)
    return ToolContext(
        services=services,
        principal=principal_of(scope),
        surface=surface,
        client_address=client_address(scope, services.settings.trust_forwarded_for),
    )


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


def limited_receive(receive: Receive, limit: int, refusal: str) -> Receive:
    """``receive`` that raises ``PayloadTooLarge(refusal)`` as soon as the body passes ``limit`` bytes, for
    parsers that read the body themselves (multipart forms)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(refusal)
        return message

    return limited


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


class CallerGuard:
    """In front of an agent protocol's endpoint: an anonymous caller is answered 401 ``AUTH_REQUIRED``
    (naming ``protocol``), and a body over ``AISERVE_MAX_REQUEST_BODY_BYTES`` 413 ``PAYLOAD_TOO_LARGE``.
    Otherwise ``handler`` gets the request with the body that was read, and a ``receive`` that replays it.

    The body is read for the methods in ``body_methods`` only; for the others ``handler`` gets ``b""`` and
    the client's own ``receive``."""

    def __init__(
        self, protocol: str, handler: BodyHandler, body_methods: frozenset[str] = frozenset({"POST"})
    ) -> None:
        self._protocol = protocol
        self._handler = handler
        self._body_methods = body_methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if principal_of(scope) is None:
            refusal = AuthRequired(
                f"{self._protocol} needs authentication: send 'Authorization: Bearer <token or API key>'"
            )
            await error_response(refusal)(scope, receive, send)
            return
        if scope["method"] not in self._body_methods:
            await self._handler(scope, b"", receive, send)
            return
        limit = services_of(scope).settings.max_request_body_bytes
        try:
            body = await read_body(Request(scope, receive), limit)
        except PayloadTooLarge as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self._handler(scope, body, replay_body(body, receive), send)


class ResponseStart:
    """A ``send`` that watches for the response start (``http.response.start``): it records the status,
    and ``edit`` (when given) may change the headers before the message goes out."""

    def __init__(self, send: Send, edit: Callable[[MutableHeaders], None] | None = None) -> None:
        self._send = send
        self._edit = edit
        self.status: int | None = None
        """The response's status once it started, else ``None``."""

    @property
    def started(self) -> bool:
        return self.status is not None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._edit is not None:
                self._edit(MutableHeaders(scope=message))
        await self._send(message)
