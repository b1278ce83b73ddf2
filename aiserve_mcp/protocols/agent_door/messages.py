"""The agent messages ``POST /api/v1/agent`` answers itself: the API reference's envelope, ACP runs, FIPA-ACL
and KQML (MCP and A2A are forwarded to their own endpoints, see ``agent_door``).

Pure functions and values: a parser turns a decoded body into an ``AgentMessage``, which says which tool the
sender asks for (``call``) and how to word the answer (``answer``) or the refusal (``refuse``) in the sender's
own protocol. Whatever the protocol, the arguments are validated by the tool's own input model.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeAlias

from aiserve_mcp.core.errors import AiserveError, ValidationFailed, error_body, kind_of

LIST_ALIASES = frozenset({"query", "capabilities", "list_tools"})
"""Action names that list the tools the caller may use, in every protocol the door answers itself."""

ANSWERING_AGENT = "aiserve"
JSON_MEDIA_TYPE = "application/json"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"

FIPA_ACTS = frozenset(
    {
        "accept-proposal", "agree", "cancel", "cfp", "confirm", "disconfirm", "failure", "inform",
        "inform-if", "inform-ref", "not-understood", "propagate", "propose", "proxy", "query-if",
        "query-ref", "refuse", "reject-proposal", "request", "request-when", "request-whenever",
        "subscribe",
    }
)  # fmt: skip
"""The 22 communicative acts of FIPA SC00037."""
FIPA_ACTED_ON = ("request", "query-ref", "query-if")

KQML_PERFORMATIVES = frozenset(
    {
        "evaluate", "reply", "ask-if", "ask-about", "ask-one", "ask-all", "stream-about", "stream-all",
        "eos", "tell", "untell", "deny", "insert", "uninsert", "delete-one", "delete-all", "undelete",
        "achieve", "unachieve", "advertise", "unadvertise", "subscribe", "error", "sorry", "standby",
        "ready", "next", "rest", "discard", "register", "unregister", "forward", "broadcast",
        "transport-address", "broker-one", "broker-all", "recommend-one", "recommend-all", "recruit-one",
        "recruit-all",
    }
)  # fmt: skip
"""The performatives of the 1993 KQML specification."""
KQML_ACTED_ON = ("ask-one", "ask-all", "achieve", "evaluate")
KQML_ONLY_KEYS = frozenset({"force", "from", "to"})
"""Parameters KQML has and FIPA-ACL lacks: they make a ``subscribe`` (a name both define) KQML."""

MAX_SEXP_DEPTH = 32
MAX_SEXP_CHARS = 1024 * 1024


class NotUnderstood(ValidationFailed):
    """A message of a protocol the door speaks that asks for nothing it does (FIPA's ``not-understood``)."""


@dataclass(frozen=True)
class ToolCall:
    """A tool by name (or a name of ``LIST_ALIASES``) and its raw arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, media type and body."""

    body: str
    media_type: str = JSON_MEDIA_TYPE
    status: int = 200


class AgentMessage(ABC):
    """A decoded message of one protocol."""

    kind: ClassVar[str]
    """The protocol's name in the ``X-Agent-Protocol`` header."""

    @abstractmethod
    def call(self) -> ToolCall:
        """The tool the message asks for; raises ``ValidationFailed`` (often ``NotUnderstood``) if none."""

    @abstractmethod
    def answer(self, result: Any) -> Reply:
        """The reply carrying a tool's JSON result."""

    @abstractmethod
    def refuse(self, error: AiserveError) -> Reply:
        """The reply carrying a refusal (the spec's error body)."""


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def json_content(content: Any) -> Any:
    """A message's content as a JSON value: text is decoded, anything else is taken as it is, and no
    content at all (``None`` or blank text) is ``{}``."""
    if not isinstance(content, str):
        return {} if content is None else content
    if not content.strip():
        return {}
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        raise NotUnderstood("the content is not valid JSON") from None


def tool_call_of(content: Any, default: str | None = None) -> ToolCall:
    """``{"tool": name, "arguments": {...}}`` (``"action"`` also names the tool), as an object or its JSON
    text. Content that names no tool calls ``default``, or is not understood when there is none."""
    value = json_content(content)
    if not isinstance(value, dict):
        raise NotUnderstood('the content must be a JSON object {"tool": name, "arguments": {...}}')
    name = value.get("tool", value.get("action")) or default
    if name is None:
        raise NotUnderstood('the content names no tool: send {"tool": name, "arguments": {...}}')
    if not isinstance(name, str):
        raise NotUnderstood("the tool's name must be a string")
    arguments = value.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise NotUnderstood("'arguments' must be a JSON object")
    return ToolCall(name, arguments)


# The envelope of the API reference


@dataclass(frozen=True)
class Envelope(AgentMessage):
    """``{"protocol", "from_agent", "to_agent", "action", "data"}``: ``action`` names a tool (or a list
    alias) and ``data`` holds its arguments. Refusals carry the HTTP status of their error."""

    kind: ClassVar[str] = "envelope"
    protocol: Any
    from_agent: Any
    to_agent: Any
    action: str
    data: Any

    def call(self) -> ToolCall:
        data = {} if self.data is None else self.data
        if not isinstance(data, dict):
            raise ValidationFailed(
                "'data' must be a JSON object: the arguments of the tool named by 'action'"
            )
        return ToolCall(self.action, data)

    def _reply(self, status: int, outcome: dict[str, Any]) -> Reply:
        body = {
            "protocol": self.protocol,
            "from_agent": self.to_agent or ANSWERING_AGENT,
            "to_agent": self.from_agent,
            "action": self.action,
            **outcome,
        }
        return Reply(_json(body), status=status)

    def answer(self, result: Any) -> Reply:
        return self._reply(200, {"status": "success", "result": result})

    def refuse(self, error: AiserveError) -> Reply:
        return self._reply(kind_of(error).http_status, {"status": "error", "error": error_body(error)})


def parse_envelope(message: dict[str, Any]) -> Envelope:
    return Envelope(
        protocol=message.get("protocol"),
        from_agent=message.get("from_agent"),
        to_agent=message.get("to_agent"),
        action=str(message.get("action")),
        data=message.get("data"),
    )


# ACP (Agent Communication Protocol, i-am-bee/acp): a synchronous run


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AcpRun(AgentMessage):
    """``{"agent_name", "input": [{"role", "parts": [{"content", "content_type"}]}]}``: ``agent_name`` names
    a tool whose arguments are the first part's content (a JSON object or its text), or is ``aiserve``
    with content ``{"tool": name, "arguments": {...}}``. The reply is a finished ACP ``Run``."""

    kind: ClassVar[str] = "acp"
    agent_name: str
    input: list[Any]
    session_id: Any = None
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=_now)

    def _first_content(self) -> Any:
        message = self.input[0] if self.input else {}
        parts = message.get("parts") if isinstance(message, dict) else None
        if not isinstance(parts, list):
            raise ValidationFailed("each ACP input message needs a 'parts' list")
        part = parts[0] if parts else {}
        if not isinstance(part, dict):
            raise ValidationFailed("an ACP message part must be an object with 'content' and 'content_type'")
        return part.get("content")

    def call(self) -> ToolCall:
        content = self._first_content()
        if self.agent_name == ANSWERING_AGENT:
            return tool_call_of(content)
        arguments = json_content(content)
        if not isinstance(arguments, dict):
            raise ValidationFailed(
                "the first part's content must be the tool's arguments as a JSON object "
                "(content_type application/json)"
            )
        return ToolCall(self.agent_name, arguments)

    def _run(self, status: str, output: list[dict[str, Any]], error: dict[str, Any] | None) -> Reply:
        run = {
            "run_id": self.run_id,
            "agent_name": self.agent_name,
            "session_id": self.session_id,
            "status": status,
            "output": output,
            "error": error,
            "created_at": self.created_at,
            "finished_at": _now(),
        }
        return Reply(_json(run))

    def answer(self, result: Any) -> Reply:
        part = {"content": _json(result), "content_type": JSON_MEDIA_TYPE}
        return self._run("completed", [{"role": f"agent/{self.agent_name}", "parts": [part]}], None)

    def refuse(self, error: AiserveError) -> Reply:
        acp_error = {"code": kind_of(error).code, "message": error.message, "data": error_body(error)}
        return self._run("failed", [], acp_error)


def parse_acp(message: dict[str, Any]) -> AcpRun:
    return AcpRun(
        agent_name=str(message.get("agent_name")),
        input=list(message.get("input") or []),
        session_id=message.get("session_id"),
    )


# FIPA-ACL, JSON encoding


@dataclass(frozen=True)
class FipaMessage(AgentMessage):
    """A FIPA-ACL message as a JSON object. ``request``, ``query-ref`` and ``query-if`` call a tool named by
    the content ``{"action" or "tool": name, "arguments": {...}}`` (or its JSON text); a ``query-ref``
    whose content names nothing lists the tools. The reply is ``inform`` (the result), ``failure`` (the
    error body) or ``not-understood``; its content is JSON text when the request's was text."""

    kind: ClassVar[str] = "fipa-acl"
    performative: str
    fields: dict[str, Any]

    def call(self) -> ToolCall:
        if self.performative not in FIPA_ACTED_ON:
            raise NotUnderstood(
                f"'{self.performative}' asks for nothing this agent does: send " + ", ".join(FIPA_ACTED_ON),
                {"acted_on": list(FIPA_ACTED_ON)},
            )
        return tool_call_of(
            self.fields.get("content"), "capabilities" if self.performative == "query-ref" else None
        )

    def _reply(self, performative: str, content: Any) -> Reply:
        receiver = self.fields.get("receiver")
        if isinstance(receiver, list):
            receiver = receiver[0] if receiver else None
        reply: dict[str, Any] = {
            "performative": performative,
            "sender": receiver or ANSWERING_AGENT,
            "receiver": self.fields.get("sender"),
            "content": _json(content) if isinstance(self.fields.get("content"), str) else content,
            "language": "json",
        }
        for asked, answered in (
            ("conversation-id", "conversation-id"),
            ("reply-with", "in-reply-to"),
            ("ontology", "ontology"),
            ("protocol", "protocol"),
        ):
            if self.fields.get(asked) is not None:
                reply[answered] = self.fields[asked]
        return Reply(_json(reply))

    def answer(self, result: Any) -> Reply:
        return self._reply("inform", result)

    def refuse(self, error: AiserveError) -> Reply:
        return self._reply(
            "not-understood" if isinstance(error, NotUnderstood) else "failure", error_body(error)
        )


def parse_fipa(message: dict[str, Any]) -> FipaMessage:
    return FipaMessage(str(message["performative"]).lower(), message)


# S-expressions (KQML's own syntax)


@dataclass(frozen=True)
class Symbol:
    """A bare word of an s-expression: a performative, a ``:keyword``, an agent name."""

    name: str


SExp: TypeAlias = Symbol | str | int | float | bool | list["SExp"] | None

_INTEGER = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_ATOMS: dict[str, SExp] = {"true": True, "false": False, "null": None, "nil": None}
_DELIMITERS = frozenset('()"')


def _atom(token: str) -> SExp:
    if token in _ATOMS:
        return _ATOMS[token]
    try:
        if _INTEGER.fullmatch(token):
            return int(token)
        if _FLOAT.fullmatch(token):
            return float(token)
    except ValueError:
        raise ValidationFailed(f"s-expression: the number {token[:20]}... is too long") from None
    return Symbol(token)


def parse_sexp(text: str) -> SExp:
    """One s-expression: lists, ``"strings"`` (a backslash escapes the next character), numbers,
    ``true``/``false``/``null``/``nil`` and symbols. Never evaluates anything; refuses text over
    ``MAX_SEXP_CHARS``, nesting over ``MAX_SEXP_DEPTH`` and unbalanced parentheses."""
    if len(text) > MAX_SEXP_CHARS:
        raise ValidationFailed(f"s-expression: longer than {MAX_SEXP_CHARS} characters")
    stack: list[list[SExp]] = []
    top: list[SExp] = []
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if top and not stack:
            raise ValidationFailed("s-expression: text after the end of the expression")
        if char == "(":
            if len(stack) >= MAX_SEXP_DEPTH:
                raise ValidationFailed(f"s-expression: nested deeper than {MAX_SEXP_DEPTH} levels")
            stack.append([])
            i += 1
            continue
        if char == ")":
            if not stack:
                raise ValidationFailed("s-expression: unbalanced parentheses (a ')' closes nothing)")
            value: SExp = stack.pop()
            i += 1
        elif char == '"':
            chars: list[str] = []
            i += 1
            while i < end and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                if i < end:
                    chars.append(text[i])
                    i += 1
            if i >= end:
                raise ValidationFailed("s-expression: a string is not closed")
            value, i = "".join(chars), i + 1
        else:
            start = i
            while i < end and not text[i].isspace() and text[i] not in _DELIMITERS:
                i += 1
            value = _atom(text[start:i])
        (stack[-1] if stack else top).append(value)
    if stack:
        raise ValidationFailed("s-expression: unbalanced parentheses (a '(' is not closed)")
    if not top:
        raise ValidationFailed("s-expression: empty")
    return top[0]


def format_sexp(value: SExp) -> str:
    """The text of ``value``, read back by ``parse_sexp`` as the same value."""
    if isinstance(value, list):
        return "(" + " ".join(format_sexp(item) for item in value) + ")"
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return json.dumps(value)


def _plain(value: SExp) -> Any:
    """An s-expression value as JSON: symbols become their names, lists arrays."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value.name if isinstance(value, Symbol) else value


def _keyword_pairs(items: list[SExp], where: str) -> dict[str, SExp]:
    if len(items) % 2:
        raise ValidationFailed(f"{where}: parameters come in ':keyword value' pairs")
    pairs: dict[str, SExp] = {}
    for keyword, value in zip(items[::2], items[1::2], strict=True):
        if not (isinstance(keyword, Symbol) and keyword.name.startswith(":") and len(keyword.name) > 1):
            raise ValidationFailed(f"{where}: {format_sexp(keyword)[:40]} is not a ':keyword'")
        pairs[keyword.name[1:].lower()] = value
    return pairs


def _sexp_tool_call(content: SExp) -> ToolCall:
    """``(tool :argument value ...)``, or a bare ``tool`` symbol."""
    if isinstance(content, Symbol):
        return ToolCall(content.name, {})
    if not (isinstance(content, list) and content and isinstance(content[0], Symbol)):
        raise NotUnderstood("the content must be (tool_name :argument value ...)")
    try:
        arguments = {name: _plain(value) for name, value in _keyword_pairs(content[1:], "content").items()}
    except ValidationFailed as exc:
        raise NotUnderstood(exc.message) from None
    return ToolCall(content[0].name, arguments)


# KQML, as an s-expression or as JSON


@dataclass(frozen=True)
class KqmlMessage(AgentMessage):
    """A KQML message. ``ask-one``, ``ask-all``, ``achieve`` and ``evaluate`` call a tool named by the
    content: ``(tool :argument value ...)``, or the JSON text (or, in the JSON form, object)
    ``{"tool": name, "arguments": {...}}``. The reply is ``tell`` (content: the result's JSON text) or
    ``sorry`` (content: the error body's JSON text), as an s-expression if the request was one, else JSON."""

    kind: ClassVar[str] = "kqml"
    performative: str
    params: dict[str, Any]
    sexp: bool

    def call(self) -> ToolCall:
        if self.performative not in KQML_ACTED_ON:
            raise NotUnderstood(
                f"'{self.performative}' asks for nothing this agent does: send " + ", ".join(KQML_ACTED_ON),
                {"acted_on": list(KQML_ACTED_ON)},
            )
        content = self.params.get("content")
        if content is None:
            raise NotUnderstood("the message has no :content naming a tool")
        if isinstance(content, str) and content.lstrip().startswith("("):
            try:
                content = parse_sexp(content)
            except ValidationFailed as exc:
                raise NotUnderstood(exc.message) from None
        if isinstance(content, Symbol | list):
            return _sexp_tool_call(content)
        return tool_call_of(content)

    def _reply(self, performative: str, content: Any) -> Reply:
        params: dict[str, Any] = {
            "sender": self.params.get("receiver")
            or (Symbol(ANSWERING_AGENT) if self.sexp else ANSWERING_AGENT),
            "receiver": self.params.get("sender"),
        }
        if self.params.get("reply-with") is not None:
            params["in-reply-to"] = self.params["reply-with"]
        if self.params.get("ontology") is not None:
            params["ontology"] = self.params["ontology"]
        params["content"] = _json(content)
        if not self.sexp:
            return Reply(_json({"performative": performative, **params, "language": "json"}))
        items: list[SExp] = [Symbol(performative)]
        for key, value in params.items():
            items += [Symbol(f":{key}"), value]
        items += [Symbol(":language"), Symbol("json")]
        return Reply(format_sexp(items), TEXT_MEDIA_TYPE)

    def answer(self, result: Any) -> Reply:
        return self._reply("tell", result)

    def refuse(self, error: AiserveError) -> Reply:
        return self._reply("sorry", error_body(error))


def kqml_from_text(text: str) -> KqmlMessage:
    """A KQML s-expression ``(performative :sender ... :content ...)``; ``ValidationFailed`` if the text is
    not one."""
    message = parse_sexp(text)
    if not (isinstance(message, list) and message and isinstance(message[0], Symbol)):
        raise ValidationFailed("KQML: the expression must start with a performative")
    performative = message[0].name.lower()
    if performative not in KQML_PERFORMATIVES:
        raise ValidationFailed(f"KQML: '{performative[:40]}' is not a KQML performative")
    params = _keyword_pairs(message[1:], "KQML")
    if "sender" not in params:
        raise ValidationFailed("KQML: the message has no :sender")
    return KqmlMessage(performative, params, sexp=True)


def kqml_from_json(message: dict[str, Any]) -> KqmlMessage:
    params = {key.lower(): value for key, value in message.items() if key != "performative"}
    return KqmlMessage(str(message["performative"]).lower(), params, sexp=False)
