"""The agent messages ``POST /api/v1/agent`` answers itself (the API reference's envelope, ACP runs, FIPA-ACL
and KQML, each in a module of its own; MCP and A2A are forwarded to their own endpoints, see ``door``): what
they share.

Pure functions and values: a parser turns a decoded body into an ``AgentMessage``, which says which tool the
sender asks for (``call``) and how to word the answer (``answer``) or the refusal (``refuse``) in the sender's
own protocol. Whatever the protocol, the arguments are validated by the tool's own input model.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from aiserve_mcp.core.errors import AiserveError, ValidationFailed
from aiserve_mcp.protocols.tool_calls import CallSyntax, Flaw, ToolCall
from aiserve_mcp.tools.registry import Surface

LIST_ALIASES = frozenset({"query", "capabilities", "list_tools"})
"""Action names that list the tools the caller may use, in every protocol the door answers itself."""

ANSWERING_AGENT = "aiserve"
JSON_MEDIA_TYPE = "application/json"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"


class NotUnderstood(ValidationFailed):
    """A message of a protocol the door speaks that asks for nothing it does (FIPA's ``not-understood``)."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, media type and body."""

    body: str
    media_type: str = JSON_MEDIA_TYPE
    status: int = 200


class AgentMessage(ABC):
    """A decoded message of one protocol."""

    kind: ClassVar[Surface]  # the protocol's name, as the door's answers and metrics label it
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


def to_json(value: Any) -> str:
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


_CONTENT_FLAWS = {
    Flaw.NAMELESS: 'the content names no tool: send {"tool": name, "arguments": {...}}',
    Flaw.NAME_NOT_TEXT: "the tool's name must be a string",
    Flaw.ARGUMENTS_NOT_OBJECT: "'arguments' must be a JSON object",
}
CONTENT_CALLS = CallSyntax(
    ("tool", "action"),
    ("arguments",),
    lambda flaw, _name: NotUnderstood(_CONTENT_FLAWS[flaw]),
    lenient_arguments=True,
)


def content_call(content: Any, default: str | None = None) -> ToolCall:
    """``{"tool": name, "arguments": {...}}`` (``"action"`` also names the tool), as an object or its JSON
    text. Content that names no tool calls ``default``, or is not understood when there is none."""
    value = json_content(content)
    if not isinstance(value, dict):
        raise NotUnderstood('the content must be a JSON object {"tool": name, "arguments": {...}}')
    return CONTENT_CALLS.read(value, default)
