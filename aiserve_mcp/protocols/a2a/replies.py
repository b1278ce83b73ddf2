"""How an A2A task ends with a tool's answer: its JSON as an artifact, or the spec's error body."""

from __future__ import annotations

import json
from typing import Any

from a2a.helpers import new_data_part
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import Message, Part

PREVIEW_CHARS = 500


def json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every value JSON can hold (a protobuf Struct holds no datetimes or decimals)."""
    safe = json.loads(json.dumps(data, default=str))
    assert isinstance(safe, dict)
    return safe


def body_message(updater: TaskUpdater, body: dict[str, Any]) -> Message:
    """The agent message that carries an error body: its code and text, and the body as a data part."""
    safe = json_safe(body)
    return updater.new_agent_message([Part(text=f"{safe['code']}: {safe['error']}"), new_data_part(safe)])


async def complete_with(updater: TaskUpdater, tool: str, data: dict[str, Any]) -> None:
    """End the task COMPLETED with ``tool``'s JSON answer as an artifact (data, and a text preview)."""
    preview = json.dumps(data, separators=(",", ":"))
    if len(preview) > PREVIEW_CHARS:
        preview = preview[:PREVIEW_CHARS] + "... (the data part has all of it)"
    await updater.add_artifact([new_data_part(data), Part(text=f"{tool} succeeded: {preview}")], name=tool)
    await updater.complete()
