"""Calling a tool: authorize, validate the input, hold a money-moving call for approval when a policy
catches it, run, measure. Every surface goes through ``call_tool``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from aiserve_mcp.core.errors import AiserveError, ValidationFailed, kind_of
from aiserve_mcp.core.outages import unexpected
from aiserve_mcp.tools.registry import Tool, ToolContext


def validation_details(error: ValidationError) -> dict[str, Any]:
    """The ``details`` of a 400: one entry per failing field, with pydantic's message."""
    return {
        "fields": [
            {"field": ".".join(str(p) for p in item["loc"]) or "(body)", "message": item["msg"]}
            for item in error.errors(include_url=False)
        ]
    }


def parse_input(tool: Tool, arguments: Mapping[str, Any]) -> BaseModel:
    try:
        return tool.input_model.model_validate(dict(arguments))
    except ValidationError as exc:
        details = validation_details(exc)
        first = details["fields"][0]
        raise ValidationFailed(
            f"invalid input for '{tool.name}': {first['field']}: {first['message']}", details
        ) from None


async def _hold_for_approval(
    tool: Tool, arguments: Mapping[str, Any], args: BaseModel, ctx: ToolContext
) -> None:
    """Raise ``ApprovalRequired`` (storing the pending approval) when an approval policy of the caller
    catches the call's quote. The quote is asked for only when some policy applies to the caller."""
    if tool.quote is None or ctx.approved is not None:
        return
    approvals = ctx.services.approvals
    principal = ctx.caller()
    if not await approvals.watches(principal):
        return
    quote = await tool.quote(ctx, args)
    if quote is not None:
        await approvals.gate(principal, tool.name, arguments, quote)


async def call_tool(tool: Tool, arguments: Mapping[str, Any], ctx: ToolContext) -> BaseModel:
    """Run ``tool`` for ``ctx.principal`` with raw ``arguments``. Raises ``AiserveError`` subclasses only
    (``ApprovalRequired`` for a call held for its owner's approval)."""
    telemetry = ctx.services.telemetry
    started = time.perf_counter()
    outcome = "ok"
    try:
        tool.authorize(ctx.principal)
        args = parse_input(tool, arguments)
        await _hold_for_approval(tool, arguments, args, ctx)
        return await tool.fn(ctx, args)
    except AiserveError as exc:
        outcome = kind_of(exc).code
        raise
    except Exception as exc:
        failure = unexpected(exc, f"tool {tool.name}")
        outcome = kind_of(failure).code
        raise failure from None
    finally:
        telemetry.child(telemetry.tool_calls, tool.name, ctx.surface, outcome).inc()
        telemetry.child(telemetry.tool_duration, tool.name).observe(time.perf_counter() - started)
