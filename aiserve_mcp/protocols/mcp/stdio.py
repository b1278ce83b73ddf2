"""``aiserve mcp``: the same tools over stdio for Claude Desktop and other local MCP clients.

The caller is the owner of ``AISERVE_API_KEY``. Only MCP messages go to stdout; logs go to stderr.
"""

from __future__ import annotations

from mcp.server.stdio import stdio_server

from aiserve_mcp.core.errors import AuthRequired
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.server import build_mcp_server
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.ports import Ports
from aiserve_mcp.tools.registry import Surface


async def serve_stdio(services: Ports, settings: Settings) -> None:
    """Serve MCP on stdin/stdout until the client closes them, as the owner of ``AISERVE_API_KEY``."""
    if settings.api_key is None:
        raise AuthRequired("set AISERVE_API_KEY to an API key (create one with 'aiserve key create')")
    principal = await services.accounts.authenticate(settings.api_key.get_secret_value())
    server = build_mcp_server(
        services, REGISTRY, lambda _ctx: principal, lambda _ctx: None, surface=Surface.STDIO
    )
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
