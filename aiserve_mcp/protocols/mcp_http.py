"""MCP over HTTP: Streamable HTTP on ``/api/v1/mcp`` (both protocol eras) and legacy HTTP+SSE on
``/api/v1/mcp/sse``.

The Streamable HTTP endpoint is stateless, so any number of server processes can sit behind a load
balancer. A client that accepts ``text/event-stream`` gets streamed responses (progress notifications
ride on them); one that does not (a bare ``curl``) gets plain JSON-RPC responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from mcp.server import Server, ServerRequestContext
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from aiserve_mcp.errors import AuthRequired
from aiserve_mcp.protocols.http_support import client_address, error_response, principal_of
from aiserve_mcp.protocols.mcp_server import AddressResolver
from aiserve_mcp.services.principal import Principal
from aiserve_mcp.settings import Settings

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


class McpHttpTransports:
    """The three MCP HTTP entry points over one ``Server``. Every one requires an authenticated caller."""

    def __init__(self, server: Server[object], settings: Settings) -> None:
        security = transport_security(settings)
        self._server = server
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

    @staticmethod
    async def _refuse_anonymous(scope: Scope, receive: Receive, send: Send) -> bool:
        if principal_of(scope) is not None:
            return False
        await error_response(
            AuthRequired("MCP needs authentication: send 'Authorization: Bearer <token or API key>'")
        )(scope, receive, send)
        return True

    async def streamable(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self._refuse_anonymous(scope, receive, send):
            return
        manager = self._streaming if _wants_stream(scope) else self._json
        await manager.handle_request(scope, receive, send)

    async def sse_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self._refuse_anonymous(scope, receive, send):
            return
        async with self._sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await self._server.run(read_stream, write_stream, self._server.create_initialization_options())

    async def sse_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self._refuse_anonymous(scope, receive, send):
            return
        await self._sse.handle_post_message(scope, receive, send)

    def routes(self) -> list[Route | Mount]:
        return [
            Route(MCP_PATH, _Asgi(self.streamable), methods=["GET", "POST", "DELETE"]),
            Route(SSE_PATH, _Asgi(self.sse_connect), methods=["GET"]),
            Mount(SSE_MESSAGES_PATH, app=_Asgi(self.sse_message)),
        ]


class _Asgi:
    """Wraps a bound method so Starlette routes to it as a raw ASGI app rather than a request handler."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(scope, receive, send)
