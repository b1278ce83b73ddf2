"""``GET /ws``: a user's live events over a WebSocket.

The caller authenticates with the account service of the API, by ``Authorization: Bearer <token or API
key>``, ``X-API-Key``, ``?token=``, or a first message ``{"type": "auth", "token": "..."}`` sent within
``AUTH_TIMEOUT_S`` (answered ``{"type": "authenticated"}``). A browser, which can set no header on a
WebSocket, is signed in by the console's session cookie, but only when the handshake's ``Origin`` is this
server (its ``Host``, ``AISERVE_PUBLIC_URL``) or one of ``AISERVE_ALLOWED_ORIGINS``: a page of another site
would otherwise ride on the cookie (cross-site WebSocket hijacking), so the cookie with a foreign
``Origin`` is refused. Missing or bad credentials are answered with an error message, then the socket is
closed with code 4401; so is a connection whose credential stops being valid (logout, a revoked key,
expiry), checked again every ``RECHECK_INTERVAL_S``.

Messages: ``ping`` -> ``pong`` and ``{"type": "ping"}`` -> ``{"type": "pong"}``; ``subscribe:<stream>`` or
``{"type": "subscribe", "stream": ...}`` -> ``{"type": "subscribed", "stream": ...}``, then that stream's
events as :meth:`Event.to_json`; ``unsubscribe:<stream>`` likewise. Anything else is answered with an
error message and the connection stays open; a message over ``MAX_MESSAGE_BYTES`` closes it (1009). A
stream needs the scope of the tools that read the same things; a caller only ever receives their own
events, and the metrics snapshots every subscriber gets.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup, TaskStatus
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from aiserve_mcp.core.errors import (
    AiserveError,
    AuthInvalid,
    AuthRequired,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
    error_body,
)
from aiserve_mcp.core.events import STREAMS, Subscription
from aiserve_mcp.core.outages import unexpected
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.admission import bearer_credential
from aiserve_mcp.protocols.prelude import services_of
from aiserve_mcp.tools.ports import Ports

WS_PATH: Final = "/ws"
SESSION_COOKIE: Final = "aiserve_session"  # the console's session (console.web sets it)
AUTH_TIMEOUT_S: Final = 10.0
RECHECK_INTERVAL_S: Final = 60.0
READY_TIMEOUT_S: Final = 5.0  # longest a subscribe waits for the event bus (Redis) to listen
MAX_MESSAGE_BYTES: Final = 4096
CLOSE_AUTH: Final = 4401
CLOSE_TOO_BIG: Final = 1009
CLOSE_ERROR: Final = 1011  # RFC 6455: the server met an unexpected condition
CLOSE_TRY_AGAIN: Final = 1013  # RFC 6455 registry: "Try Again Later" (a dependency is down)
STREAM_SCOPES: Final[dict[str, str | None]] = {
    "instances": "gpu:read",
    "spending": "guardrails:read",
    "models": "models:read",
    "approvals": "guardrails:read",
    "metrics": None,  # like /stats: public
}
HELP: Final = (
    "send ping, subscribe:<stream> or unsubscribe:<stream> (or the same as JSON objects with a type); "
    f"streams: {', '.join(STREAMS)}"
)

Outgoing = dict[str, Any] | str
GONE: Final = (WebSocketDisconnect, WebSocketDisconnected)  # the client left (or was closed)


async def events_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    services = services_of(websocket.scope)
    try:
        credential, by_message = await _credential(websocket)
        principal = await services.accounts.authenticate(credential)
    except AiserveError as exc:
        await _close(websocket, exc, CLOSE_AUTH)
        return
    except WebSocketDisconnect:
        return
    except Exception as exc:
        error = unexpected(exc, "WebSocket authentication")
        await _close(
            websocket, error, CLOSE_TRY_AGAIN if isinstance(error, ServiceUnavailable) else CLOSE_ERROR
        )
        return
    connection = _Connection(websocket, services, credential, principal)
    if by_message:
        await connection.send({"type": "authenticated"})
    await connection.serve()


def origin_allowed(origin: str, host: str | None, public_url: str | None, allowed: Iterable[str]) -> bool:
    """Whether a browser's ``origin`` is this server: its ``host``, the origin of ``public_url``, or one of
    ``allowed`` (exact, or ``scheme://host:*`` for any port)."""
    netloc = urlsplit(origin).netloc
    if origin not in (f"http://{netloc}", f"https://{netloc}") or not netloc:
        return False
    if netloc == host or (public_url and origin == _origin_of(public_url)):
        return True
    return any(origin == a or _any_port(a, origin) for a in allowed)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _any_port(pattern: str, origin: str) -> bool:
    base = pattern.removesuffix("*")
    return pattern.endswith(":*") and origin.startswith(base) and origin[len(base) :].isdigit()


def _session_cookie(websocket: WebSocket) -> str | None:
    """The console session from the cookie when the page that opened the socket is this server's; None
    without a cookie or an ``Origin`` (a program, not a browser page)."""
    session = websocket.cookies.get(SESSION_COOKIE)
    origin = websocket.headers.get("origin")
    if not session or not origin:
        return None
    settings = services_of(websocket.scope).settings
    host = websocket.headers.get("host")
    if not origin_allowed(origin, host, settings.public_url, settings.allowed_origins):
        raise AuthInvalid(
            f"a page of {origin} cannot use this server's console session (only this server's own pages "
            "and AISERVE_ALLOWED_ORIGINS can): send a token instead"
        )
    return session


async def _credential(websocket: WebSocket) -> tuple[str, bool]:
    """The credential from the headers, the query or the console session (False), else from the first
    message (True)."""
    credential = (
        bearer_credential(websocket.headers)
        or websocket.query_params.get("token")
        or _session_cookie(websocket)
    )
    if credential:
        return credential, False
    with anyio.move_on_after(AUTH_TIMEOUT_S):
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        body = _json_object(message.get("text") or "")
        token = body.get("token") if body.get("type") == "auth" else None
        if isinstance(token, str) and token:
            return token, True
        raise AuthRequired('the first message must be {"type": "auth", "token": "<token or API key>"}')
    raise AuthRequired(f"no credentials: send an auth message within {AUTH_TIMEOUT_S:g} s")


async def _close(websocket: WebSocket, error: AiserveError, code: int) -> None:
    """Send ``error`` as a message, then close with ``code`` (unless the client left first)."""
    body = error_body(error)
    with contextlib.suppress(*GONE):
        await websocket.send_json({"type": "error", **body})
        await websocket.close(code, body["code"])


def _json_object(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text) if len(text) <= MAX_MESSAGE_BYTES else None
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


class _Connection:
    """One authenticated socket: its subscriptions (one per stream, each with a task that forwards its
    events) and one lock that keeps outgoing messages whole and in order."""

    def __init__(self, websocket: WebSocket, services: Ports, credential: str, principal: Principal) -> None:
        self._websocket = websocket
        self._services = services
        self._credential = credential
        self._principal = principal
        self._forwarding: dict[str, tuple[Subscription, anyio.CancelScope]] = {}
        self._sending = anyio.Lock()

    async def serve(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._recheck, group)
                await self._receive(group)
                group.cancel_scope.cancel()
        finally:
            for subscription, _ in self._forwarding.values():
                self._services.events.unsubscribe(subscription)

    async def send(self, message: Outgoing) -> None:
        async with self._sending:
            await self._send_now(message)

    async def _send_now(self, message: Outgoing) -> None:
        with contextlib.suppress(*GONE):  # the receiving side sees the disconnect and ends the connection
            if isinstance(message, str):
                await self._websocket.send_text(message)
            else:
                await self._websocket.send_json(message)

    async def _close(self, error: AiserveError, code: int) -> None:
        async with self._sending:
            await _close(self._websocket, error, code)

    async def _receive(self, group: TaskGroup) -> None:
        while True:
            message = await self._websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            size = len(text.encode()) if text is not None else len(message.get("bytes") or b"")
            if size > MAX_MESSAGE_BYTES:
                too_big = PayloadTooLarge(f"messages are at most {MAX_MESSAGE_BYTES} bytes")
                await self._close(too_big, CLOSE_TOO_BIG)
                return
            try:
                if text is None:
                    raise ValidationFailed(f"send text messages; {HELP}")
                await self._handle(text, group)
            except AiserveError as exc:
                await self.send({"type": "error", **error_body(exc)})
            except Exception as exc:  # the message failed, the connection goes on
                await self.send({"type": "error", **error_body(unexpected(exc, "WebSocket message"))})

    async def _handle(self, text: str, group: TaskGroup) -> None:
        if text.strip() == "ping":
            await self.send("pong")
            return
        command, colon, stream = text.partition(":")
        if colon and command in ("subscribe", "unsubscribe"):
            await self._stream_command(command, stream.strip(), group)
            return
        body = _json_object(text)
        kind = body.get("type")
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind in ("subscribe", "unsubscribe"):
            await self._stream_command(kind, body.get("stream"), group)
        elif kind == "auth":
            raise ValidationFailed("this connection is already authenticated")
        else:
            raise ValidationFailed(f"unknown message; {HELP}")

    async def _stream_command(self, command: str, stream: object, group: TaskGroup) -> None:
        if not isinstance(stream, str) or stream not in STREAM_SCOPES:
            raise ValidationFailed(f"unknown stream {stream!r}; {HELP}", {"streams": list(STREAMS)})
        if command == "subscribe":
            await self._subscribe(stream, group)
        else:
            self._unsubscribe(stream)
            await self.send({"type": "unsubscribed", "stream": stream})

    async def _subscribe(self, stream: str, group: TaskGroup) -> None:
        scope = STREAM_SCOPES[stream]
        if scope is not None and not self._principal.has_scope(scope):
            raise Forbidden(f"the {stream} stream needs the {scope} scope", {"required_scope": scope})
        async with self._sending:  # the answer goes out before the stream's first event
            if stream not in self._forwarding:
                events = self._services.events
                subscription = events.subscribe(self._principal.user_id, frozenset({stream}))
                cancel = await group.start(self._forward, subscription)
                self._forwarding[stream] = (subscription, cancel)
                with anyio.move_on_after(READY_TIMEOUT_S):
                    await events.ready()
            await self._send_now({"type": "subscribed", "stream": stream})

    def _unsubscribe(self, stream: str) -> None:
        forwarding = self._forwarding.pop(stream, None)
        if forwarding is not None:
            subscription, cancel = forwarding
            self._services.events.unsubscribe(subscription)
            cancel.cancel()

    async def _forward(
        self, subscription: Subscription, *, task_status: TaskStatus[anyio.CancelScope]
    ) -> None:
        with anyio.CancelScope() as cancel:
            task_status.started(cancel)
            async for event in subscription:
                await self.send(event.to_json())

    async def _recheck(self, group: TaskGroup) -> None:
        """Close the connection once its credential is no longer valid."""
        while True:
            await anyio.sleep(RECHECK_INTERVAL_S)
            try:
                with anyio.CancelScope(shield=True):  # a query cut off halfway leaves its connection behind
                    await self._services.accounts.authenticate(self._credential)
            except AiserveError as exc:
                await self._close(exc, CLOSE_AUTH)
                group.cancel_scope.cancel()
                return
            except Exception as exc:  # cannot tell now (the database is down): keep it, check again later
                unexpected(exc, "WebSocket credential check")


def websocket_routes() -> list[WebSocketRoute]:
    return [WebSocketRoute(WS_PATH, events_socket)]
