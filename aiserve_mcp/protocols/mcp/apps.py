"""MCP Apps (extension ``io.modelcontextprotocol/ui``): views a host can show the person behind an agent.

``search_gpu_offers`` points (tool ``_meta.ui.resourceUri``) at ``ui://aiserve/offers``, a table comparing the
offers, and ``get_spending`` at ``ui://aiserve/spending``, each window's spending as a bar against its limit.
A host that renders MCP Apps reads the view (``text/html;profile=mcp-app``) and hands it the tool result over
postMessage; a host that does not ignores the pointer and shows the tool's text and structured content,
which stay complete. The tool registry knows nothing of this: the mapping lives here.

Views are self-contained HTML built from ``views/``: the shared stylesheet and bridge script are inlined, so
a view loads nothing; ``_meta.ui.csp`` declares no outside origin. A view is listed and readable for a
caller who may call its tool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources as package_files
from typing import Any, Final

from mcp import types
from mcp.server import ServerRequestContext
from mcp.server.apps import APP_MIME_TYPE, ResourceCsp

from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.mcp.resources import McpResources, as_mcp_error
from aiserve_mcp.tools.registry import ToolRegistry

UI_META: Final[dict[str, Any]] = {
    "ui": {
        "csp": ResourceCsp(connect_domains=[], resource_domains=[], frame_domains=[]).model_dump(
            by_alias=True, exclude_none=True
        ),
        "prefersBorder": True,
    }
}
"""The resource ``_meta`` of every view: no outside origin to connect to or load from, and a border."""
INLINED: Final = {
    '<link rel="stylesheet" href="view.css">': ("style", "view.css"),
    '<script src="bridge.js"></script>': ("script", "bridge.js"),
}
"""The references in a view's file to the shared files, each replaced by the file's text in its tag."""


@dataclass(frozen=True)
class View:
    """A ``ui://`` view (``file`` under ``views/``) showing the results of the tool ``tool``."""

    uri: str
    name: str
    title: str
    description: str
    tool: str
    file: str


VIEWS: Final = (
    View(
        "ui://aiserve/offers",
        "offers-view",
        "GPU offers comparison",
        "The offers a search_gpu_offers call found, cheapest first, as a table: GPU model, GPUs, VRAM per "
        "GPU, price per hour and per GPU-hour (with a bar), provider, location, reliability and offer id; "
        "providers that failed are listed above it.",
        tool="search_gpu_offers",
        file="offers.html",
    ),
    View(
        "ui://aiserve/spending",
        "spending-view",
        "Spending against limits",
        "A get_spending result as a table: each rolling window's spending as a bar against its limit, "
        "who it applies to (your account or this API key) and when it frees up, with the window closest "
        "to its limit and any violation above it.",
        tool="get_spending",
        file="spending.html",
    ),
)
VIEW_OF_TOOL: Final = {view.tool: view for view in VIEWS}


def tool_meta(tool_name: str) -> dict[str, Any] | None:
    """The ``_meta`` of a tool in ``tools/list``: the pointer to its view, if it has one."""
    view = VIEW_OF_TOOL.get(tool_name)
    return None if view is None else {"ui": {"resourceUri": view.uri}}


def _view_file(name: str) -> str:
    return (package_files.files("aiserve_mcp.protocols.mcp") / "views" / name).read_text(encoding="utf-8")


@cache
def view_html(view: View) -> str:
    """The view's document with the shared stylesheet and script inlined."""
    html = _view_file(view.file)
    for reference, (tag, name) in INLINED.items():
        if reference not in html:
            raise ValueError(f"views/{view.file} lacks {reference}")
        html = html.replace(reference, f"<{tag}>\n{_view_file(name)}</{tag}>")
    return html


class McpApps:
    """The resource handlers of the MCP server: every resource of ``resources``, then the views of the
    registry's tools."""

    def __init__(
        self,
        registry: ToolRegistry,
        principal_of: Callable[[ServerRequestContext[object]], Principal | None],
        resources: McpResources,
    ) -> None:
        tools = {tool.name: tool for tool in registry}
        self._views = {v.uri: (v, tools[v.tool]) for v in VIEWS if v.tool in tools}
        self._principal_of = principal_of
        self._resources = resources

    async def list_resources(
        self, ctx: ServerRequestContext[object], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        listed = await self._resources.list_resources(ctx, params)
        principal = self._principal_of(ctx)
        views = [
            types.Resource(
                uri=v.uri,
                name=v.name,
                title=v.title,
                description=v.description,
                mime_type=APP_MIME_TYPE,
                _meta=UI_META,
            )
            for v, tool in self._views.values()
            if tool.visible_to(principal)
        ]
        return listed.model_copy(update={"resources": [*listed.resources, *views]})

    async def read(
        self, ctx: ServerRequestContext[object], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        if params.uri not in self._views:
            return await self._resources.read(ctx, params)
        view, tool = self._views[params.uri]
        try:
            tool.authorize(self._principal_of(ctx))
        except AiserveError as exc:
            raise as_mcp_error(exc) from None
        content = types.TextResourceContents(
            uri=view.uri, mime_type=APP_MIME_TYPE, text=view_html(view), _meta=UI_META
        )
        return types.ReadResourceResult(contents=[content])
