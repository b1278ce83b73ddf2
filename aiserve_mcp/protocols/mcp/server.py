"""The MCP server (official SDK, low-level ``Server``): lists and calls the registry's tools, and serves the
resources (``resources``), MCP Apps views (``apps``) and prompts (``prompts``) built on them; the
conformance suite's fixtures (``aiserve_mcp.dev.mcp_conformance``, a testing aid imported only then) only
when ``AISERVE_MCP_CONFORMANCE_FIXTURES`` is set.

Tool refusals are ``isError`` results whose text is the spec's error body (code + message an agent can act
on), never a JSON-RPC error and never a hidden "Error executing tool". A call held for its owner's approval
asks the way the client can (``approvals``: elicitation, input-required, or the pending approval).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.apps import EXTENSION_ID as APPS_EXTENSION
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from aiserve_mcp import __version__
from aiserve_mcp.core.errors import AiserveError, ApprovalRequired
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.mcp import approvals
from aiserve_mcp.protocols.mcp.apps import McpApps, tool_meta
from aiserve_mcp.protocols.mcp.prompts import McpPrompts
from aiserve_mcp.protocols.mcp.resources import McpResources
from aiserve_mcp.protocols.mcp.results import refusal_result, tool_result
from aiserve_mcp.tools.ports import Ports
from aiserve_mcp.tools.registry import Surface, Tool, ToolContext, ToolRegistry
from aiserve_mcp.tools.runner import call_tool

TOOLS_PAGE_SIZE = 50
INSTRUCTIONS = (
    "aiserve: rent GPUs across marketplaces, balance traffic over them, serve your own models, pay, and "
    "stay inside the spending limits you set. Every tool returns structured JSON. A refused call returns "
    'isError with {"error", "code", "details"}: read the code (AUTH_INVALID, VALIDATION_ERROR, NOT_FOUND, '
    "SPENDING_LIMIT, RATE_LIMITED, ...) and the message to decide what to do next; APPROVAL_REQUIRED means "
    "the call waits for the account owner's approval (nothing was done or spent yet): poll get_approval "
    "with details.approval.id. Resources "
    "aiserve://instances, aiserve://models, aiserve://spending (subscribable) and aiserve://gpu/catalog are "
    "the same JSON as the read tools; prompts find_cheapest_gpu, deploy_and_test_model and review_spending "
    "walk through common workflows."
)

PrincipalResolver = Callable[[ServerRequestContext[object]], Principal | None]
AddressResolver = Callable[[ServerRequestContext[object]], str | None]


@cache
def mcp_tool(tool: Tool) -> types.Tool:
    """The MCP description of a tool (built once: schemas do not change while the server runs)."""
    hints = tool.annotations
    return types.Tool(
        name=tool.name,
        title=hints.title,
        description=tool.description,
        input_schema=tool.input_model.model_json_schema(),
        output_schema=tool.output_model.model_json_schema(mode="serialization"),
        annotations=types.ToolAnnotations(
            title=hints.title,
            read_only_hint=hints.read_only,
            destructive_hint=hints.destructive,
            idempotent_hint=hints.idempotent,
            open_world_hint=hints.open_world,
        ),
        _meta=tool_meta(tool.name),
    )


def _page_offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise MCPError(code=types.INVALID_PARAMS, message=f"invalid cursor {cursor!r}")
    return int(cursor)


def build_mcp_server(
    services: Ports,
    registry: ToolRegistry,
    principal_of: PrincipalResolver,
    address_of: AddressResolver,
    surface: Surface,
) -> Server[object]:
    """An MCP server over ``registry`` whose caller for each request comes from ``principal_of``."""

    async def list_tools(
        ctx: ServerRequestContext[object], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = principal_of(ctx)
        visible = [t for t in registry if t.visible_to(principal)]
        offset = _page_offset(params.cursor if params else None)
        page = visible[offset : offset + TOOLS_PAGE_SIZE]
        more = offset + TOOLS_PAGE_SIZE < len(visible)
        return types.ListToolsResult(
            tools=[mcp_tool(t) for t in page], next_cursor=str(offset + TOOLS_PAGE_SIZE) if more else None
        )

    def tool_context(ctx: ServerRequestContext[object]) -> ToolContext:
        return ToolContext(
            services, principal_of(ctx), surface, address_of(ctx), progress=ctx.session.report_progress
        )

    async def run_tool(
        ctx: ServerRequestContext[object], name: str, arguments: Mapping[str, Any]
    ) -> BaseModel:
        return await call_tool(registry.for_agents(name), arguments, tool_context(ctx))

    async def call(
        ctx: ServerRequestContext[object], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            if params.request_state is not None:  # the answer to the approval question of an earlier call
                return await approvals.resume(tool_context(ctx), params)
            result = await run_tool(ctx, params.name, params.arguments or {})
        except ApprovalRequired as pending:
            return await approvals.ask(ctx, tool_context(ctx), pending)
        except AiserveError as exc:
            return refusal_result(exc)
        return tool_result(result.model_dump(mode="json"))

    resources = McpResources(registry, services.events, principal_of, run_tool)
    apps = McpApps(registry, principal_of, resources)
    prompts = McpPrompts(registry, principal_of)
    server: Server[object] = Server(
        "aiserve",
        version=__version__,
        title="aiserve",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call,
        on_list_resources=apps.list_resources,
        on_list_resource_templates=resources.list_templates,
        on_read_resource=apps.read,
        on_subscribe_resource=resources.subscribe,
        on_unsubscribe_resource=resources.unsubscribe,
        on_subscriptions_listen=resources.listen,
        on_list_prompts=prompts.list_prompts,
        on_get_prompt=prompts.get_prompt,
    )
    server.extensions[APPS_EXTENSION] = {}
    server.middleware.append(approvals.request_state_boundary(services, principal_of))
    if services.settings.mcp_conformance_fixtures:
        fixtures = importlib.import_module("aiserve_mcp.dev.mcp_conformance")  # never loaded in production
        fixtures.install_conformance_fixtures(server)
    return server
