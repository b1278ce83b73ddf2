"""MCP sessions across the processes of ``aiserve serve --workers N``.

An MCP session lives in the process that opened it (its streams, its pending requests to the client), but
the shared port gives each new connection to any process. So each process tags what it hands out with its
index (see :class:`~aiserve_mcp.core.processes.ProcessGroup`): the ``Mcp-Session-Id`` of every session it
opens (``p1.<id>``) and the message path of every legacy SSE stream (``/api/v1/mcp/messages/p1/``). A
request naming another process's tag is relayed, whole and before anything else looks at it, to that
process over its private socket, and its answer (streamed answers included) comes back as it is written.
The owner then does everything as if the client had called it directly: authentication, the rate limit,
the session's check that the caller is the one who opened it. Its own requests lose the tag on the way
in and their answers gain it on the way out. A session whose process is gone is answered as the SDK
answers an unknown session (404), which tells the client to open a new one.

The relay names the caller's address in a header the owner believes only with the group's token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiserve_mcp.core.errors import PayloadTooLarge
from aiserve_mcp.core.processes import ProcessGroup
from aiserve_mcp.protocols.prelude import ResponseStart, error_response, read_body

log = logging.getLogger(__name__)

HOP_HEADER = "x-aiserve-relayed-for"  # "<group token> <client address>", set by a sibling's relay
SESSION_HEADER = MCP_SESSION_ID_HEADER.lower()
# Not forwarded either way: they describe one connection, not the request.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
    | {HOP_HEADER}
)


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.decode("latin-1").lower() not in HOP_BY_HOP]


def messages_path(base: str, group: ProcessGroup | None) -> str:
    """The legacy SSE message path this process hands out: ``base`` with its tag in a group."""
    return base if group is None else f"{base}{group.tag(group.index).rstrip('.')}/"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Siblings:
    """HTTP clients to the sibling processes' private sockets, opened on first use."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self._clients: dict[int, httpx.AsyncClient] = {}

    def client(self, index: int) -> httpx.AsyncClient:
        client = self._clients.get(index)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.group.socket_path(index)))
            timeout = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=30.0)
            client = httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)
            self._clients[index] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


class SessionAffinity:
    """In front of the whole app when several processes serve one port; see the module docstring.
    A relayed body over ``max_body`` bytes is refused here (413), as the owner would refuse it."""

    def __init__(
        self, app: ASGIApp, siblings: Siblings, mcp_path: str, messages_base: str, max_body: int
    ) -> None:
        self.app = app
        self._siblings = siblings
        self._group = siblings.group
        self._mcp_path = mcp_path
        self._messages_base = messages_base
        self._max_body = max_body
        self._own_tag = self._group.tag(self._group.index)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self._mcp_path):
            await self.app(scope, receive, send)
            return
        self._believe_relay(scope)
        owner = self._owner(scope, path)
        if owner is not None and owner != self._group.index:
            await self._relay(owner, scope, receive, send)
            return
        if path == self._mcp_path:
            await self._untag_session(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _believe_relay(self, scope: Scope) -> None:
        """Drop the relay header; a sibling's (right token) names the caller's address."""
        relayed = _header(scope, HOP_HEADER.encode())
        if relayed is None:
            return
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != HOP_HEADER.encode()]
        token, _, address = relayed.partition(" ")
        if hmac.compare_digest(token.encode(), self._group.token.encode()) and address:
            scope["client"] = (address, 0)

    def _owner(self, scope: Scope, path: str) -> int | None:
        if path == self._mcp_path:
            session = _header(scope, SESSION_HEADER.encode())
            return self._group.owner(session) if session is not None else None
        if path.startswith(self._messages_base):
            tag = path[len(self._messages_base) :].split("/", 1)[0]
            return self._group.owner(tag + ".")
        return None

    async def _untag_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Our own session: the SDK knows it by its untagged id; answers name it tagged."""
        tag = self._own_tag
        scope["headers"] = [
            (k, v[len(tag) :] if k == SESSION_HEADER.encode() and v.startswith(tag.encode()) else v)
            for k, v in scope["headers"]
        ]

        def tag_answer(headers: MutableHeaders) -> None:
            session = headers.get(SESSION_HEADER)
            if session is not None:
                headers[SESSION_HEADER] = tag + session

        await self.app(scope, receive, ResponseStart(send, tag_answer))

    async def _relay(self, owner: int, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(Request(scope, receive), self._max_body)
        except PayloadTooLarge as exc:
            await error_response(exc)(scope, receive, send)
            return
        headers = _end_to_end(scope["headers"])
        caller = scope.get("client")
        headers.append((HOP_HEADER.encode(), f"{self._group.token} {caller[0] if caller else ''}".encode()))
        query = scope.get("query_string", b"").decode("latin-1")
        client = self._siblings.client(owner)
        url = httpx.URL(f"http://aiserve{scope['path']}", query=query.encode())
        request = client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.info("process %d does not answer for its MCP session: %s", owner, exc)
            await _session_gone()(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _end_to_end(response.headers.raw),
                }
            )
            async with anyio.create_task_group() as relaying:
                relaying.start_soon(_cancel_on_disconnect, receive, relaying.cancel_scope)
                await _pipe(response.aiter_raw(), send)
                relaying.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()


def _session_gone() -> JSONResponse:
    """What the SDK answers for an unknown session: the client opens a new one."""
    error = {"code": -32600, "message": "Session not found"}
    return JSONResponse({"jsonrpc": "2.0", "id": "server-error", "error": error}, status_code=404)


async def _pipe(chunks: AsyncIterator[bytes], send: Send) -> None:
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """End the relay when the client goes away (a streamed answer would otherwise run on)."""
    message: Message = {"type": ""}
    while message["type"] != "http.disconnect":
        message = await receive()
    scope.cancel()
