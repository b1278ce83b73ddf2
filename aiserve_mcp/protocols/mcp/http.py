"""MCP over HTTP: Streamable HTTP on ``/api/v1/mcp`` (both protocol eras) and legacy HTTP+SSE on
``/api/v1/mcp/sse``.

The Streamable HTTP endpoint is stateless, so any number of server processes can sit behind a load
balancer. A client that accepts ``text/event-stream`` gets streamed responses (progress notifications
ride on them); one that does not (a bare ``curl``) gets plain JSON-RPC responses. Being stateless, it
cannot push anything outside a response: ``resources/subscribe`` needs legacy SSE or stdio, while
2026-07-28 clients watch resources with ``subscriptions/listen``, whose response is the stream.

Cancelling: a 2026-07-28 client closes the response stream. A 2025-11-25 client POSTs
``notifications/cancelled``, which arrives on a request of its own: it cancels the caller's one in-flight
request with that id in this process (a load balancer must send both to the same process).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
from mcp.server import Server, ServerRequestContext
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from aiserve_mcp.core.principal import Principal
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.server import AddressResolver
from aiserve_mcp.protocols.prelude import CallerGuard, ResponseStart, client_address, principal_of

MCP_PATH = "/api/v1/mcp"
SSE_PATH = "/api/v1/mcp/sse"
SSE_MESSAGES_PATH = "/api/v1/mcp/messages/"


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host and Origin checks against DNS rebinding; ``*`` in allowed hosts turns them off."""
    if "*" in settings.allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )


def request_principal(ctx: ServerRequestContext[object]) -> Principal | None:
    request = ctx.request
    return principal_of(request.scope) if isinstance(request, Request) else None


def request_address_resolver(settings: Settings) -> AddressResolver:
    def resolve(ctx: ServerRequestContext[object]) -> str | None:
        request = ctx.request
        return (
            client_address(request.scope, settings.trust_forwarded_for)
            if isinstance(request, Request)
            else None
        )

    return resolve


def _wants_stream(scope: Scope) -> bool:
    return "text/event-stream" in Headers(scope=scope).get("accept", "")


def _message(body: bytes) -> dict[str, Any] | None:
    """``body`` as one JSON-RPC message object, or None (the SDK answers malformed bodies)."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class _InFlight:
    """The cancel scopes of the Streamable HTTP requests being answered, by caller and JSON-RPC id."""

    def __init__(self) -> None:
        self._scopes: dict[tuple[str, ...], list[anyio.CancelScope]] = {}

    @contextmanager
    def track(self, key: tuple[str, ...]) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            self._scopes.setdefault(key, []).append(scope)
            try:
                yield scope
            finally:
                scopes = self._scopes[key]
                scopes.remove(scope)
                if not scopes:
                    del self._scopes[key]

    def cancel(self, key: tuple[str, ...]) -> None:
        """Cancel the request ``key`` names, unless several do (two clients of one credential reusing an
        id): then it cannot tell which one was meant, and cancels none."""
        scopes = self._scopes.get(key, [])
        if len(scopes) == 1:
            scopes[0].cancel()


class McpHttpTransports:
    """The three MCP HTTP entry points over one ``Server``. Every one requires an authenticated caller."""

    def __init__(self, server: Server[object], settings: Settings) -> None:
        security = transport_security(settings)
        self._server = server
        self._in_flight = _InFlight()
        self._streaming = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=False, security_settings=security
        )
        self._json = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=True, security_settings=security
        )
        self._sse = SseServerTransport(SSE_MESSAGES_PATH, security_settings=security)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self._streaming.run())
            await stack.enter_async_context(self._json.run())
            yield

    async def streamable(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """``/api/v1/mcp``; ``receive`` replays ``body``, which was read for POST requests only."""
        manager = self._streaming if _wants_stream(scope) else self._json
        if scope["method"] != "POST":
            await manager.handle_request(scope, receive, send)
            return
        message, principal = _message(body), principal_of(scope)
        assert principal is not None  # the guard refused anonymous callers
        caller = (principal.user_id, principal.api_key_id or principal.grant_id or principal.session_id or "")
        if message is not None and message.get("method") == "notifications/cancelled":
            params = message.get("params")
            if isinstance(params, dict) and "requestId" in params:
                self._in_flight.cancel((*caller, json.dumps(params["requestId"])))
        if message is None or "id" not in message or "method" not in message:
            await manager.handle_request(scope, receive, send)
            return
        watched = ResponseStart(send)
        with self._in_flight.track((*caller, json.dumps(message["id"]))) as cancelled:
            await manager.handle_request(scope, receive, watched)
        if cancelled.cancelled_caught and not watched.started:  # the client gave up: no answer is owed
            await Response(status_code=204)(scope, receive, send)

    async def sse_connect(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        async with self._sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await self._server.run(read_stream, write_stream, self._server.create_initialization_options())

    async def sse_message(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """A legacy SSE client's message; the SDK reads the body itself."""
        await self._sse.handle_post_message(scope, receive, send)

    def routes(self) -> list[Route | Mount]:
        return [
            Route(MCP_PATH, CallerGuard("MCP", self.streamable), methods=["GET", "POST", "DELETE"]),
            Route(SSE_PATH, CallerGuard("MCP", self.sse_connect), methods=["GET"]),
            Mount(SSE_MESSAGES_PATH, app=CallerGuard("MCP", self.sse_message, body_methods=frozenset())),
        ]
