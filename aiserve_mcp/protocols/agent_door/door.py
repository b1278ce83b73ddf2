"""``POST /api/v1/agent``: one door for every agent protocol.

Authentication and rate limiting are HTTP admission's, as on the rest of ``/api/v1``; the door needs an
authenticated caller. It reads the body once (up to ``AISERVE_MAX_REQUEST_BODY_BYTES``) and recognises the
protocol, first match wins:

1. headers: ``MCP-Protocol-Version``, ``Mcp-Session-Id`` or ``Mcp-Method`` => MCP; ``A2A-Version`` => A2A;
2. a JSON-RPC 2.0 request (a batch by its first element) whose ``method`` is MCP's or A2A's (1.0 or 0.3).
   ``tasks/get`` and ``tasks/cancel``, which both define, are MCP's when ``params`` has ``taskId``;
3. the API reference's envelope: ``protocol`` and a string ``action``;
4. an ACP run: a string ``agent_name`` and an ``input`` list;
5. FIPA-ACL as JSON: a FIPA ``performative`` with ``sender`` and ``receiver``;
6. KQML: an s-expression (the body, or the body's JSON string) headed by a KQML performative, with
   ``:sender``; or JSON with a KQML ``performative`` and ``sender``. ``subscribe``, the one performative
   both define, is FIPA-ACL when the message has ``sender`` and ``receiver`` and none of KQML's own
   parameters (``force``, ``from``, ``to``), else KQML.

MCP and A2A are not reimplemented here: the request (headers, the buffered body) is handed as it is to
the route that serves ``/api/v1/mcp`` (or ``/api/v1/a2a``). The others are answered here, each tool call
going through ``call_tool`` like every surface's. Anything else is 400 ``VALIDATION_ERROR`` listing the
supported protocols and how each is recognised. The answer to a recognised message carries
``X-Agent-Protocol`` (mcp, a2a, envelope, acp, fipa-acl or kqml). A ``GET`` or ``DELETE`` with MCP's
headers goes to MCP too: a Streamable HTTP session's stream of server requests, and its end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from aiserve_mcp.core.errors import AiserveError, InternalError, NotImplementedYet, ValidationFailed
from aiserve_mcp.protocols.a2a.card import A2A_PATH
from aiserve_mcp.protocols.agent_door.acp import parse_acp
from aiserve_mcp.protocols.agent_door.envelope import parse_envelope
from aiserve_mcp.protocols.agent_door.fipa import FIPA_ACTS, parse_fipa
from aiserve_mcp.protocols.agent_door.kqml import (
    KQML_ONLY_KEYS,
    KQML_PERFORMATIVES,
    KqmlMessage,
    kqml_from_json,
    kqml_from_text,
)
from aiserve_mcp.protocols.agent_door.message import LIST_ALIASES, AgentMessage, Reply
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from aiserve_mcp.protocols.prelude import CallerGuard, ResponseStart, error_response, tool_context
from aiserve_mcp.protocols.tool_calls import ToolCall
from aiserve_mcp.tools.registry import Tool, ToolContext, ToolRegistry
from aiserve_mcp.tools.runner import call_tool

AGENT_PATH = "/api/v1/agent"
PROTOCOL_HEADER = "X-Agent-Protocol"
_FORWARDED = "aiserve.agent_door.forwarded"

MCP_HEADERS = ("mcp-protocol-version", "mcp-session-id", "mcp-method")
MCP_METHODS = frozenset(
    {
        "initialize", "ping", "server/discover", "completion/complete", "logging/setLevel",
        "subscriptions/listen", "tasks/list", "tasks/result",
    }
)  # fmt: skip
MCP_METHOD_PREFIXES = ("tools/", "resources/", "prompts/", "notifications/")
A2A_METHODS = frozenset(
    {
        # A2A 1.0
        "SendMessage", "SendStreamingMessage", "GetTask", "ListTasks", "CancelTask", "SubscribeToTask",
        "CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfig", "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig", "GetExtendedAgentCard",
        # A2A 0.3
        "message/send", "message/stream", "tasks/resubscribe", "agent/getAuthenticatedExtendedCard",
    }
)  # fmt: skip
A2A_METHOD_PREFIXES = ("tasks/pushNotificationConfig/",)
SHARED_METHODS = ("tasks/get", "tasks/cancel")  # MCP's and A2A 0.3's

SUPPORTED: tuple[tuple[str, str], ...] = (
    (
        "mcp",
        "an MCP-Protocol-Version, Mcp-Session-Id or Mcp-Method header, or a JSON-RPC 2.0 request whose "
        "method is MCP's (initialize, tools/list, tools/call, ...); served as /api/v1/mcp serves it",
    ),
    (
        "a2a",
        "an A2A-Version header, or a JSON-RPC 2.0 request whose method is A2A's (SendMessage, GetTask, "
        "message/send, tasks/get, ...); served as /api/v1/a2a serves it",
    ),
    (
        "envelope",
        '{"protocol", "from_agent", "to_agent", "action", "data"}: action names a tool (or query, '
        "capabilities, list_tools), data holds its arguments",
    ),
    ("acp", '{"agent_name": tool, "input": [{"parts": [{"content": arguments JSON, "content_type"}]}]}'),
    (
        "fipa-acl",
        '{"performative": request | query-ref | query-if, "sender", "receiver", "content": {"action": '
        'tool, "arguments": {...}}}',
    ),
    (
        "kqml",
        "(ask-one :sender a :receiver aiserve :content (tool :argument value)) as text, or JSON with a KQML "
        '"performative" and "sender"',
    ),
)


def unsupported(reason: str) -> ValidationFailed:
    """The 400 for a body of no supported protocol: why, and what would have been recognised."""
    listed = "; ".join(f"{name}: {how}" for name, how in SUPPORTED)
    return ValidationFailed(
        f"the message matches no supported agent protocol ({reason}). Supported: {listed}",
        {
            "reason": reason,
            "supported": [{"protocol": name, "recognised_by": how} for name, how in SUPPORTED],
        },
    )


@dataclass(frozen=True)
class Forward:
    """A protocol served by another route of this app."""

    protocol: str
    path: str


MCP = Forward("mcp", MCP_PATH)
A2A = Forward("a2a", A2A_PATH)


def jsonrpc_target(request: dict[str, Any]) -> Forward | None:
    """Where a JSON-RPC 2.0 request goes by its method, or ``None`` when neither MCP nor A2A has it."""
    method = request["method"]
    if method in SHARED_METHODS:
        params = request.get("params")
        return MCP if isinstance(params, dict) and "taskId" in params else A2A
    if method in MCP_METHODS or method.startswith(MCP_METHOD_PREFIXES):
        return MCP
    if method in A2A_METHODS or method.startswith(A2A_METHOD_PREFIXES):
        return A2A
    return None


def _kqml_text(text: str) -> KqmlMessage:
    try:
        return kqml_from_text(text)
    except ValidationFailed as exc:
        raise unsupported(exc.message) from None


def _detect_json(message: Any) -> Forward | AgentMessage:
    first = message[0] if isinstance(message, list) and message else message
    if isinstance(first, dict) and first.get("jsonrpc") == "2.0" and isinstance(first.get("method"), str):
        target = jsonrpc_target(first)
        if target is None:
            raise unsupported(f"the JSON-RPC method {first['method'][:80]!r} is neither MCP's nor A2A's")
        return target
    if isinstance(message, str) and message.lstrip().startswith("("):
        return _kqml_text(message)
    if not isinstance(message, dict):
        raise unsupported("the JSON is not an object of any shape below")
    if "protocol" in message and isinstance(message.get("action"), str):
        return parse_envelope(message)
    if isinstance(message.get("agent_name"), str) and isinstance(message.get("input"), list):
        return parse_acp(message)
    performative = message.get("performative")
    if isinstance(performative, str) and "sender" in message:
        name = performative.lower()
        kqml_only = not KQML_ONLY_KEYS.isdisjoint(message)
        if name in FIPA_ACTS and "receiver" in message and not (kqml_only and name in KQML_PERFORMATIVES):
            return parse_fipa(message)
        if name in KQML_PERFORMATIVES:
            return kqml_from_json(message)
    raise unsupported("the JSON object has none of the shapes below")


def detect(headers: Headers, body: bytes) -> Forward | AgentMessage:
    """The protocol of a request to the door (see the module's docstring for the order); raises the 400
    of ``unsupported`` when there is none."""
    if any(name in headers for name in MCP_HEADERS):
        return MCP
    if "a2a-version" in headers:
        return A2A
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise unsupported("the body is not UTF-8 text") from None
    try:
        message = json.loads(text)
    except RecursionError:
        raise unsupported("the JSON is nested too deeply") from None
    except ValueError as exc:
        if text.lstrip().startswith("("):
            return _kqml_text(text)
        raise unsupported(f"the body is neither JSON nor a KQML s-expression: {exc}") from None
    return _detect_json(message)


@cache
def describe_tool(tool: Tool) -> dict[str, Any]:
    """A tool as the list aliases show it (built once: schemas do not change while the server runs)."""
    return {
        "name": tool.name,
        "title": tool.annotations.title,
        "description": tool.description,
        "scope": tool.scope,
        "input_schema": tool.input_model.model_json_schema(),
    }


class AgentDoor:
    """The ASGI app behind ``POST /api/v1/agent``, over the tools of ``registry``."""

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry
        self._guarded = CallerGuard("the agent door", self._serve)

    def route(self) -> Route:
        return Route(AGENT_PATH, self, methods=["POST", "GET", "DELETE"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _FORWARDED in scope:  # a forwarded request must never come back here
            await error_response(InternalError("the agent door forwarded a request to itself"))(
                scope, receive, send
            )
            return
        if scope["method"] != "POST" and not any(name in Headers(scope=scope) for name in MCP_HEADERS):
            raise HTTPException(405, headers={"Allow": "POST"})  # only an MCP session is served otherwise
        await self._guarded(scope, receive, send)

    async def _serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """An authenticated caller's message; ``receive`` replays ``body``."""
        try:
            detected = detect(Headers(scope=scope), body)
        except AiserveError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if isinstance(detected, Forward):
            await self._forward(detected, scope, receive, send)
            return
        reply = await self._answer(detected, scope)
        response = Response(
            reply.body,
            status_code=reply.status,
            media_type=reply.media_type,
            headers={PROTOCOL_HEADER: detected.kind},
        )
        await response(scope, receive, send)

    async def _forward(self, target: Forward, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request to the route serving ``target.path``, as if it had been sent there."""
        path = scope["path"].removesuffix(AGENT_PATH) + target.path
        inner: Scope = {**scope, "path": path, "raw_path": path.encode(), _FORWARDED: target.protocol}
        for route in scope["app"].router.routes:
            match, child_scope = route.matches(inner)
            if match is Match.FULL:
                inner.update(child_scope)
                tagged = ResponseStart(send, lambda headers: headers.append(PROTOCOL_HEADER, target.protocol))
                await route.handle(inner, receive, tagged)
                return
        missing = NotImplementedYet(
            f"this is a {target.protocol} message, but POST {target.path} is not served on this server yet",
            {"protocol": target.protocol},
        )
        await error_response(missing, {PROTOCOL_HEADER: target.protocol})(scope, receive, send)

    async def _answer(self, message: AgentMessage, scope: Scope) -> Reply:
        ctx = tool_context(scope, message.kind)
        try:
            result = await self._run(message.call(), ctx)
        except AiserveError as exc:
            return message.refuse(exc)
        return message.answer(result)

    async def _run(self, call: ToolCall, ctx: ToolContext) -> Any:
        if call.name in LIST_ALIASES:
            return {"tools": [describe_tool(t) for t in self._registry if t.visible_to(ctx.principal)]}
        tool = self._registry.for_agents(call.name)
        return (await call_tool(tool, call.arguments, ctx)).model_dump(mode="json")
