"""FIPA-ACL messages in their JSON encoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from aiserve_mcp.core.errors import AiserveError, error_body
from aiserve_mcp.protocols.agent_door.message import (
    ANSWERING_AGENT,
    AgentMessage,
    NotUnderstood,
    Reply,
    content_call,
    to_json,
)
from aiserve_mcp.protocols.tool_calls import ToolCall
from aiserve_mcp.tools.registry import Surface

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


@dataclass(frozen=True)
class FipaMessage(AgentMessage):
    """A FIPA-ACL message as a JSON object. ``request``, ``query-ref`` and ``query-if`` call a tool named by
    the content ``{"action" or "tool": name, "arguments": {...}}`` (or its JSON text); a ``query-ref``
    whose content names nothing lists the tools. The reply is ``inform`` (the result), ``failure`` (the
    error body) or ``not-understood``; its content is JSON text when the request's was text."""

    kind: ClassVar[Surface] = Surface.FIPA_ACL
    performative: str
    fields: dict[str, Any]

    def call(self) -> ToolCall:
        if self.performative not in FIPA_ACTED_ON:
            raise NotUnderstood(
                f"'{self.performative}' asks for nothing this agent does: send " + ", ".join(FIPA_ACTED_ON),
                {"acted_on": list(FIPA_ACTED_ON)},
            )
        return content_call(
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
            "content": to_json(content) if isinstance(self.fields.get("content"), str) else content,
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
        return Reply(to_json(reply))

    def answer(self, result: Any) -> Reply:
        return self._reply("inform", result)

    def refuse(self, error: AiserveError) -> Reply:
        return self._reply(
            "not-understood" if isinstance(error, NotUnderstood) else "failure", error_body(error)
        )


def parse_fipa(message: dict[str, Any]) -> FipaMessage:
    return FipaMessage(str(message["performative"]).lower(), message)
