"""MCP over HTTP: Streamable HTTP on ``/api/v1/mcp`` (both protocol eras) and legacy HTTP+SSE on
``/api/v1/mcp/sse``.

Streamable HTTP: a 2025-11-25 client's ``initialize`` opens a session (``Mcp-Session-Id``), which the
client's later requests name. A session lives in the process that opened it: the processes of one
``aiserve serve --workers N`` relay its requests there (:mod:`aiserve_mcp.protocols.mcp.affinity`), and
servers on several hosts behind a load balancer need it to route on that header (sticky sessions); in
return the server can send requests of its own to the client mid-call (elicitation, sampling). A session
answers only to the credential that opened it: any other caller naming it is answered 404, as if it did
not exist. ``AISERVE_MCP_STATELESS=true`` opens no sessions. Requests without a session id (2026-07-28
clients, whose era has no sessions, and bare JSON-RPC POSTs) are answered statelessly by whichever process
gets them. A client that accepts ``text/event-stream`` gets streamed responses (progress notifications ride on
them); one that does not (a bare ``curl``) gets plain JSON-RPC responses. A stateless request cannot
carry a server request: ``resources/subscribe`` needs a session, legacy SSE or stdio, while 2026-07-28
clients watch resources with ``subscriptions/listen``, whose response is the stream.

Cancelling: a 2026-07-28 client closes the response stream. A 2025-11-25 client POSTs
``notifications/cancelled``, which arrives on a request of its own: it cancels the caller's one in-flight
request with that id in this process (a load balancer must send both to the same process).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from aiserve_mcp.core.principal import Principal
from aiserve_mcp.core.processes import ProcessGroup
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.affinity import messages_path
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


def _caller(principal: Principal) -> tuple[str, str]:
    """The user and the credential they called with."""
    return principal.user_id, principal.api_key_id or principal.grant_id or principal.session_id or ""


def _session_owner(scope: Scope) -> Principal:
    """The caller (the guard refused anonymous ones), also named in ``scope`` the way the SDK binds a
    session (Streamable HTTP or legacy SSE) to the credential that opened it and refuses it to any other
    (404, as if it did not exist)."""
    principal = principal_of(scope)
    assert principal is not None
    user_id, credential = _caller(principal)
    scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=credential, scopes=[], subject=user_id))
    return principal


@dataclass(frozen=True)
class _Managers:
    """Streamable HTTP answered as streams and as plain JSON, by what the client accepts."""

    streaming: StreamableHTTPSessionManager
    json: StreamableHTTPSessionManager

    @classmethod
    def of(cls, server: Server[object], security: TransportSecuritySettings, stateless: bool) -> _Managers:
        def manager(json_response: bool) -> StreamableHTTPSessionManager:
            return StreamableHTTPSessionManager(
                app=server, stateless=stateless, json_response=json_response, security_settings=security
            )

        return cls(manager(json_response=False), manager(json_response=True))

    def for_accept(self, scope: Scope) -> StreamableHTTPSessionManager:
        return self.streaming if _wants_stream(scope) else self.json

    def holding(self, scope: Scope, session_id: str) -> StreamableHTTPSessionManager:
        """The manager that opened session ``session_id`` (a client's GET stream or DELETE may accept
        otherwise than its POSTs did); for an unknown id, the one the client's Accept header picks, which
        answers 404. The SDK keeps its sessions in ``_server_instances``."""
        opened = (m for m in (self.streaming, self.json) if session_id in m._server_instances)
        return next(opened, self.for_accept(scope))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.streaming.run(), self.json.run():
            yield


class McpHttpTransports:
    """The three MCP HTTP entry points over one ``Server``. Every one requires an authenticated caller."""

    def __init__(self, server: Server[object], settings: Settings, group: ProcessGroup | None = None) -> None:
        security = transport_security(settings)
        self._server = server
        self._in_flight = _InFlight()
        self._stateless = _Managers.of(server, security, stateless=True)
        self._sessions = None if settings.mcp_stateless else _Managers.of(server, security, stateless=False)
        self._sse = SseServerTransport(messages_path(SSE_MESSAGES_PATH, group), security_settings=security)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for managers in (self._stateless, self._sessions):
                if managers is not None:
                    await stack.enter_async_context(managers.running())
            yield

    def _manager(self, scope: Scope, message: dict[str, Any] | None) -> StreamableHTTPSessionManager:
        """Who answers a request: the session it names, a new session for a 2025-11-25 ``initialize``,
        otherwise (or with ``AISERVE_MCP_STATELESS``) the stateless managers."""
        if self._sessions is not None:
            session_id = Headers(scope=scope).get(MCP_SESSION_ID_HEADER)
            if session_id is not None:
                return self._sessions.holding(scope, session_id)
            if message is not None and message.get("method") == "initialize":
                return self._sessions.for_accept(scope)
        return self._stateless.for_accept(scope)

    async def streamable(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """``/api/v1/mcp``; ``receive`` replays ``body``, which was read for POST requests only."""
        principal = _session_owner(scope)
        message = _message(body) if scope["method"] == "POST" else None
        manager = self._manager(scope, message)
        if scope["method"] != "POST":
            await manager.handle_request(scope, receive, send)
            return
        caller = _caller(principal)
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
        _session_owner(scope)
        async with self._sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await self._server.run(read_stream, write_stream, self._server.create_initialization_options())

    async def sse_message(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """A legacy SSE client's message; the SDK reads the body itself."""
        _session_owner(scope)
        await self._sse.handle_post_message(scope, receive, send)

    def routes(self) -> list[Route | Mount]:
        return [
            Route(MCP_PATH, CallerGuard("MCP", self.streamable), methods=["GET", "POST", "DELETE"]),
            Route(SSE_PATH, CallerGuard("MCP", self.sse_connect), methods=["GET"]),
            Mount(SSE_MESSAGES_PATH, app=CallerGuard("MCP", self.sse_message, body_methods=frozenset())),
        ]
