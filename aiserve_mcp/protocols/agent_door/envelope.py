"""The envelope of the API reference: ``{"protocol", "from_agent", "to_agent", "action", "data"}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from aiserve_mcp.core.errors import AiserveError, ValidationFailed, error_body, kind_of
from aiserve_mcp.protocols.agent_door.message import ANSWERING_AGENT, AgentMessage, Reply, to_json
from aiserve_mcp.protocols.tool_calls import ToolCall
from aiserve_mcp.tools.registry import Surface


@dataclass(frozen=True)
class Envelope(AgentMessage):
    """``{"protocol", "from_agent", "to_agent", "action", "data"}``: ``action`` names a tool (or a list
    alias) and ``data`` holds its arguments. Refusals carry the HTTP status of their error."""

    kind: ClassVar[Surface] = Surface.ENVELOPE
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
        return Reply(to_json(body), status=status)

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
