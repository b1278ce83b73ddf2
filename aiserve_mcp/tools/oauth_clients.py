"""Apps connected to the caller's account through OAuth (MCP hosts such as Claude or an IDE): list them,
and disconnect one."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

from aiserve_mcp.accounts.oauth import Connection
from aiserve_mcp.money.guardrails import grant_scope
from aiserve_mcp.tools.common import Input, NoInput, Text
from aiserve_mcp.tools.ports import MoneyPort, OAuthPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool


class ConnectionPorts(OAuthPort, MoneyPort, Protocol):
    """The grants that connect apps to accounts, and the budget of each."""


class ConnectedClient(BaseModel):
    grant_id: str = Field(description="This consent's id (an app connected twice has two).")
    client_id: str = Field(description="The app's OAuth client id: a registration id or its metadata URL.")
    client_name: str
    redirect_uris: list[str] = Field(description="Where the app receives its sign-in answers.")
    scopes: list[str] = Field(description="Scopes the app was granted.")
    budget: dict[str, float] = Field(description="The app's own spending limits, window -> USD.")
    connected_at: datetime


class ConnectedClientList(BaseModel):
    clients: list[ConnectedClient]
    count: int


async def _described(ctx: ToolContext[ConnectionPorts], connection: Connection) -> ConnectedClient:
    limits = await ctx.services.costs.guardrails.limits(grant_scope(connection.grant_id))
    return ConnectedClient(
        grant_id=connection.grant_id,
        client_id=connection.client_id,
        client_name=connection.client_name,
        redirect_uris=connection.redirect_uris,
        scopes=connection.scopes,
        budget={w.name: float(w.limit) for w in limits},
        connected_at=connection.connected_at,
    )


@tool(scope="account:read", annotations=Annotations("List connected apps"))
async def list_connected_clients(ctx: ToolContext[ConnectionPorts], args: NoInput) -> ConnectedClientList:
    """List the apps (OAuth clients such as MCP hosts) connected to your account, one entry per consent you
    gave: the scopes and the spending budget you gave each, and when."""
    connections = await ctx.services.oauth.connections(ctx.caller().user_id)
    clients = [await _described(ctx, c) for c in connections]
    return ConnectedClientList(clients=clients, count=len(clients))


class DisconnectClientInput(Input):
    client_id: Text = Field(max_length=1024, description="The app's client_id, from list_connected_clients.")


class DisconnectClientOutput(BaseModel):
    message: str
    disconnected: list[ConnectedClient]


@tool(scope="account:write", annotations=Annotations("Disconnect app", read_only=False, destructive=True))
async def disconnect_client(
    ctx: ToolContext[ConnectionPorts], args: DisconnectClientInput
) -> DisconnectClientOutput:
    """Disconnect an app from your account: every token it holds stops working at once, and it has to ask
    for your consent again to reconnect. Cannot be undone."""
    caller = ctx.caller()
    ended = await ctx.services.oauth.disconnect(caller.user_id, args.client_id)
    described = [await _described(ctx, c) for c in ended]
    return DisconnectClientOutput(message="app disconnected", disconnected=described)
