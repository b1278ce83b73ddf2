"""The tool call an A2A message asks for.

A data part ``{"tool": name, "arguments": {...}}`` (``skill``/``action`` and ``args``/``data`` are accepted
too) names the tool. A message with a file part uploads that file as a model (the ``upload_model`` tool):
its bytes travel as ``content_base64`` and its URL as ``url``, and a data part beside it holds the model's
settings, either bare (``{"name": "mlp"}``) or as ``upload_model``'s arguments.
"""

from __future__ import annotations

import base64
from typing import Any

from a2a.helpers import get_data_parts
from a2a.types import Message, Part

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.protocols.a2a.card import CALL_FORMAT
from aiserve_mcp.protocols.tool_calls import CallSyntax, Flaw, ToolCall

UPLOAD_TOOL = "upload_model"


def _malformed_call(flaw: Flaw, name: str | None) -> ValidationFailed:
    if flaw is Flaw.ARGUMENTS_NOT_OBJECT:
        return ValidationFailed(f"the arguments of '{name}' must be an object", {"format": CALL_FORMAT})
    return ValidationFailed("the tool name must be a non-empty string", {"format": CALL_FORMAT})


CALLS = CallSyntax(("tool", "skill", "action"), ("arguments", "args", "data"), _malformed_call)


def _integral(value: Any) -> Any:
    """Whole numbers back to ints: A2A data parts are protobuf Values, which hold every number as a double."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _file_source(file: Part) -> dict[str, str]:
    if file.WhichOneof("content") == "url":
        return {"url": file.url}
    source = {"content_base64": base64.b64encode(file.raw).decode("ascii")}
    return source | ({"filename": file.filename} if file.filename else {})


def _upload_call(files: list[Part], data_parts: list[Any]) -> ToolCall:
    """``upload_model`` of the message's one file part, with the settings of its first data part."""
    if len(files) != 1:
        raise ValidationFailed(f"send one file part per message to upload a model (got {len(files)})")
    settings: dict[str, Any] = {}
    for data in data_parts:
        if isinstance(data, dict):
            if CALLS.names_a_tool(data):
                call = CALLS.read(data)
                if call.name != UPLOAD_TOOL:
                    raise ValidationFailed(
                        f"a file part uploads a model: name the tool '{UPLOAD_TOOL}' (not '{call.name}'), "
                        "or send only the model's settings in the data part",
                        {"format": CALL_FORMAT},
                    )
                settings = call.arguments
            else:
                settings = data
            break
    return ToolCall(UPLOAD_TOOL, _integral(settings) | _file_source(files[0]))


def call_in(message: Message | None) -> ToolCall | None:
    """The tool call of ``message``: an upload when it carries a file part, else the first data part that
    names a tool; ``None`` when the message has neither."""
    parts = list(message.parts) if message is not None else []
    files = [part for part in parts if part.WhichOneof("content") in ("raw", "url")]
    data_parts = get_data_parts(parts)
    if files:
        return _upload_call(files, data_parts)
    if not data_parts:
        return None
    for data in data_parts:
        if isinstance(data, dict) and CALLS.names_a_tool(data):
            call = CALLS.read(data)
            return ToolCall(call.name, _integral(call.arguments))
    raise ValidationFailed(
        'a data part must name the tool to run: {"tool": "<name>", "arguments": {...}}',
        {"format": CALL_FORMAT},
    )
