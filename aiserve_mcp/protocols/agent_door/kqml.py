"""KQML messages, as an s-expression or as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from aiserve_mcp.core.errors import AiserveError, ValidationFailed, error_body
from aiserve_mcp.protocols.agent_door.message import (
    ANSWERING_AGENT,
    TEXT_MEDIA_TYPE,
    AgentMessage,
    NotUnderstood,
    Reply,
    content_call,
    to_json,
)
from aiserve_mcp.protocols.agent_door.sexp import SExp, Symbol, format_sexp, keyword_pairs, parse_sexp, plain
from aiserve_mcp.protocols.tool_calls import ToolCall
from aiserve_mcp.tools.registry import Surface

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


def _sexp_tool_call(content: SExp) -> ToolCall:
    """``(tool :argument value ...)``, or a bare ``tool`` symbol."""
    if isinstance(content, Symbol):
        return ToolCall(content.name, {})
    if not (isinstance(content, list) and content and isinstance(content[0], Symbol)):
        raise NotUnderstood("the content must be (tool_name :argument value ...)")
    try:
        arguments = {name: plain(value) for name, value in keyword_pairs(content[1:], "content").items()}
    except ValidationFailed as exc:
        raise NotUnderstood(exc.message) from None
    return ToolCall(content[0].name, arguments)


@dataclass(frozen=True)
class KqmlMessage(AgentMessage):
    """A KQML message. ``ask-one``, ``ask-all``, ``achieve`` and ``evaluate`` call a tool named by the
    content: ``(tool :argument value ...)``, or the JSON text (or, in the JSON form, object)
    ``{"tool": name, "arguments": {...}}``. The reply is ``tell`` (content: the result's JSON text) or
    ``sorry`` (content: the error body's JSON text), as an s-expression if the request was one, else JSON."""

    kind: ClassVar[Surface] = Surface.KQML
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
        return content_call(content)

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
        params["content"] = to_json(content)
        if not self.sexp:
            return Reply(to_json({"performative": performative, **params, "language": "json"}))
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
    params = keyword_pairs(message[1:], "KQML")
    if "sender" not in params:
        raise ValidationFailed("KQML: the message has no :sender")
    return KqmlMessage(performative, params, sexp=True)


def kqml_from_json(message: dict[str, Any]) -> KqmlMessage:
    params = {key.lower(): value for key, value in message.items() if key != "performative"}
    return KqmlMessage(str(message["performative"]).lower(), params, sexp=False)
