"""The "Connected apps" page: the OAuth clients (MCP hosts and other apps) connected to the person's
account, with the scopes and budget each was given, and a button that disconnects one (its tokens stop
working at once), through the ``list_connected_clients`` and ``disconnect_client`` tools."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.web import CONSOLE, act, checked_form, person, render, secured, see_other
from aiserve_mcp.core.errors import AiserveError, kind_of
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.tools.oauth_clients import ConnectedClientList

CONNECTIONS: Final = f"{CONSOLE}/connections"


async def _page(request: Request, principal: Principal, status: int = 200, **context: Any) -> Response:
    listed = await act(request, principal, "list_connected_clients", {})
    assert isinstance(listed, ConnectedClientList)
    full = {"user": principal, "clients": listed.clients, **context}
    return await render(request, "connections.html", full, status=status)


async def connections_page(request: Request) -> Response:
    """``GET``: the connected apps."""
    principal = await person(request)
    notice = "App disconnected." if request.query_params.get("notice") == "disconnected" else None
    return await _page(request, principal, notice=notice)


async def disconnect(request: Request) -> Response:
    """``POST`` (field ``client_id``): disconnect that app through ``disconnect_client``."""
    principal = await person(request)
    form = await checked_form(request)
    client_id = form.get("client_id")
    try:
        await act(request, principal, "disconnect_client", {"client_id": client_id})
    except AiserveError as exc:
        return await _page(request, principal, kind_of(exc).http_status, error=exc.message)
    return secured(see_other(f"{CONNECTIONS}?notice=disconnected"))


routes = [
    Route(CONNECTIONS, connections_page, methods=["GET"]),
    Route(f"{CONNECTIONS}/disconnect", disconnect, methods=["POST"]),
]
