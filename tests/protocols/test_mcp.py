"""The official MCP SDK client against a running server: what is MCP's own over Streamable HTTP (both eras),
legacy SSE and stdio. The calls every surface shares (results, refusals) are in test_every_surface."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

from aiserve_mcp.protocols.mcp.http import MCP_PATH
from tests.conftest import Account, LiveServer, api_key, sign_up
from tests.mcp_clients import TRANSPORTS, Transport, all_tools, mcp_client


@pytest.fixture
async def live_account(live_server: LiveServer) -> AsyncIterator[Account]:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        yield await sign_up(http)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_transport_negotiates_its_version_and_lists_tools(
    transport: Transport, live_server: LiveServer, live_account: Account
) -> None:
    async with mcp_client(live_server.url, live_account.access_token, transport) as client:
        if transport == "streamable-modern":
            assert client.protocol_version == "2026-07-28"
        else:
            assert client.protocol_version == "2025-11-25"
        listed = await all_tools(client)
        names = {t.name for t in listed}
        assert {"whoami", "create_api_key", "export_account", "system_health"} <= names
        assert "auth_login" not in names  # REST-only: an MCP caller is already authenticated
        whoami = next(t for t in listed if t.name == "whoami")
        assert whoami.output_schema is not None and "user" in whoami.output_schema["properties"]
        assert whoami.annotations is not None and whoami.annotations.read_only_hint is True
        revoke = next(t for t in listed if t.name == "revoke_api_key")
        assert revoke.annotations is not None and revoke.annotations.destructive_hint is True


async def test_api_key_scopes_filter_the_tool_list(live_server: LiveServer, live_account: Account) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        key = await api_key(http, live_account, scopes=["system:read"])
    async with mcp_client(live_server.url, key) as client:
        names = {t.name for t in await all_tools(client)}
        assert "system_stats" in names
        assert "export_account" not in names and "create_api_key" not in names


async def test_bare_json_rpc_post_as_in_the_spec(live_server: LiveServer, live_account: Account) -> None:
    """The spec's example: a plain POST of tools/list with only Content-Type (and the token)."""
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.post(
            MCP_PATH,
            content=json.dumps({"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}),
            headers={"Content-Type": "application/json", **live_account.headers},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["id"] == 1 and any(t["name"] == "export_account" for t in body["result"]["tools"])

        call = await http.post(
            MCP_PATH,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}},
            },
            headers=live_account.headers,
        )
        assert call.json()["result"]["structuredContent"]["user"]["email"] == live_account.email


async def test_host_and_origin_validation(live_server: LiveServer, live_account: Account) -> None:
    listing = {"jsonrpc": "2.0", "method": "tools/list", "id": 1}
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        rebinding = await http.post(
            MCP_PATH, json=listing, headers={**live_account.headers, "Host": "evil.example"}
        )
        assert rebinding.status_code == 421
        cross_site = await http.post(
            MCP_PATH, json=listing, headers={**live_account.headers, "Origin": "http://evil.example"}
        )
        assert cross_site.status_code == 403
        same_host = await http.post(
            MCP_PATH, json=listing, headers={**live_account.headers, "Origin": "http://localhost:3000"}
        )
        assert same_host.status_code == 200


async def test_stdio_server_for_claude_desktop(
    live_server: LiveServer, live_account: Account, server_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        key = await api_key(http, live_account)
    env: dict[str, Any] = {**server_env, "AISERVE_API_KEY": key}
    params = StdioServerParameters(command=sys.executable, args=["-m", "aiserve_mcp", "mcp"], env=env)
    async with Client(params) as client:
        names = {t.name for t in await all_tools(client)}
        assert "whoami" in names
        result = await client.call_tool("whoami", {})
        assert result.structured_content is not None
        assert result.structured_content["auth_method"] == "api_key"
        assert result.structured_content["user"]["email"] == live_account.email
        refused = await client.call_tool("revoke_api_key", {"key_id": "missing"})
        assert refused.is_error is True
        assert json.loads(refused.content[0].text)["code"] == "NOT_FOUND"  # type: ignore[union-attr]
