"""ACP (Agent Communication Protocol, i-am-bee/acp): a synchronous run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiserve_mcp.core.errors import AiserveError, ValidationFailed, error_body, kind_of
from aiserve_mcp.protocols.agent_door.message import (
    ANSWERING_AGENT,
    JSON_MEDIA_TYPE,
    AgentMessage,
    Reply,
    content_call,
    json_content,
    to_json,
)
from aiserve_mcp.protocols.tool_calls import ToolCall
from aiserve_mcp.tools.registry import Surface


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AcpRun(AgentMessage):
    """``{"agent_name", "input": [{"role", "parts": [{"content", "content_type"}]}]}``: ``agent_name`` names
    a tool whose arguments are the first part's content (a JSON object or its text), or is ``aiserve``
    with content ``{"tool": name, "arguments": {...}}``. The reply is a finished ACP ``Run``."""

    kind: ClassVar[Surface] = Surface.ACP
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
            return content_call(content)
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
        return Reply(to_json(run))

    def answer(self, result: Any) -> Reply:
        part = {"content": to_json(result), "content_type": JSON_MEDIA_TYPE}
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
