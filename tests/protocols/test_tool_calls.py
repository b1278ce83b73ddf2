"""The one tool-call parser, as A2A data parts and the agent door's contents spell a call."""

from __future__ import annotations

from typing import Any

import pytest

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.protocols.a2a.calls import CALLS as A2A_CALLS
from aiserve_mcp.protocols.agent_door.message import CONTENT_CALLS, NotUnderstood
from aiserve_mcp.protocols.tool_calls import ToolCall


@pytest.mark.parametrize(
    ("data", "call"),
    [
        ({"tool": "t", "arguments": {"a": 1}}, ToolCall("t", {"a": 1})),
        ({"skill": "t", "args": {"a": 1}}, ToolCall("t", {"a": 1})),
        ({"action": "t", "data": {"a": 1}}, ToolCall("t", {"a": 1})),
        ({"tool": "t", "arguments": None, "args": {"a": 1}}, ToolCall("t", {})),  # the first key present
        ({"tool": "t"}, ToolCall("t", {})),
    ],
)
def test_a2a_spellings(data: dict[str, Any], call: ToolCall) -> None:
    assert A2A_CALLS.read(data) == call


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tool": ""}, "the tool name must be a non-empty string"),
        ({"tool": None, "action": "t"}, "the tool name must be a non-empty string"),
        ({"tool": 3}, "the tool name must be a non-empty string"),
        ({"tool": "t", "arguments": []}, "the arguments of 't' must be an object"),
    ],
)
def test_a2a_refusals(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        A2A_CALLS.read(data)
    assert refused.value.message == message and "tool" in refused.value.details["format"]


def test_door_contents_take_empty_arguments_and_fall_back_to_the_default() -> None:
    assert CONTENT_CALLS.read({"action": "t", "arguments": []}) == ToolCall("t", {})
    assert CONTENT_CALLS.read({"tool": "", "action": "t"}, "capabilities") == ToolCall("capabilities", {})
    assert CONTENT_CALLS.read({"skill": "t"}, "capabilities") == ToolCall("capabilities", {})
    malformed: list[tuple[dict[str, Any], str]] = [
        ({}, 'the content names no tool: send {"tool": name, "arguments": {...}}'),
        ({"tool": 3}, "the tool's name must be a string"),
        ({"tool": "t", "arguments": [1]}, "'arguments' must be a JSON object"),
    ]
    for data, message in malformed:
        with pytest.raises(NotUnderstood) as refused:
            CONTENT_CALLS.read(data)
        assert refused.value.message == message
