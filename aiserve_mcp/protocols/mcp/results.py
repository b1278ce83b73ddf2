"""How a tool call's outcome reads as an MCP ``CallToolResult``."""

from __future__ import annotations

import json
from typing import Any

from mcp import types

from aiserve_mcp.core.errors import AiserveError, error_body


def tool_result(data: dict[str, Any]) -> types.CallToolResult:
    """A tool's answer: its JSON as structured content and, for clients that read text, as text."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(data))], structured_content=data
    )


def error_result(body: dict[str, Any]) -> types.CallToolResult:
    """A refused call: ``isError``, with the spec's error body as its text."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(body))], is_error=True
    )


def refusal_result(error: AiserveError) -> types.CallToolResult:
    """The tool result of a call refused with ``error``."""
    return error_result(error_body(error))
