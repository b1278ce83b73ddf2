"""OAuth 2.1 for MCP against a served app: discovery, and the MCP SDK's own client signing in end to end
(with dynamic registration and with a client metadata document served over https), a person signing in
and consenting on the console's pages, then the tools listed and called; the token works on REST, A2A
and the WebSocket too, and disconnecting the app in the console ends it at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from tests.conftest import sign_up
from tests.console.session import console_sign_in, csrf_of
from tests.protocols.oauth_flow import (
    MemoryStorage,
    OAuthServer,
    Person,
    mcp_host,
    mcp_session,
    oauth_server,
)
from tests.protocols.test_a2a import a2a, artifact_data, call, run

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[OAuthServer]:
    async with oauth_server(settings, tmp_path) as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_discovery_starts_at_the_mcp_endpoints_401(served: OAuthServer) -> None:
    http, url = served.http, served.url
    metadata_url = f"{url}/.well-known/oauth-protected-resource{MCP_PATH}"
    anonymous = await http.post(MCP_PATH, json=INITIALIZE, headers=MCP_HEADERS)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "AUTH_REQUIRED"
    challenge = f'Bearer realm="aiserve", resource_metadata="{metadata_url}"'
    assert anonymous.headers["www-authenticate"] == challenge
    stale = await http.post(MCP_PATH, json=INITIALIZE, headers={**MCP_HEADERS, **bearer("not-a-token")})
    assert stale.status_code == 401 and stale.json()["code"] == "AUTH_INVALID"
    assert 'error="invalid_token"' in stale.headers["www-authenticate"]
    assert metadata_url in stale.headers["www-authenticate"]
    elsewhere = await http.get("/api/v1/guardrails/spending")
    assert "resource_metadata" not in elsewhere.headers.get("www-authenticate", "")

    resource = (await http.get(metadata_url)).json()
    assert resource["resource"] == url + MCP_PATH
    assert [s.rstrip("/") for s in resource["authorization_servers"]] == [url]
    assert "gpu:read" in resource["scopes_supported"]
    assert not {"guardrails:admin", "admin"} & set(resource["scopes_supported"])
    whole = (await http.get("/.well-known/oauth-protected-resource")).json()
    assert whole["resource"].rstrip("/") == url

    server = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert server["issuer"].rstrip("/") == url
    assert server["registration_endpoint"] == f"{url}/register"
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert "none" in server["token_endpoint_auth_methods_supported"]
    assert server["client_id_metadata_document_supported"] is True
    assert "guardrails:admin" in server["scopes_supported"]


async def test_an_mcp_host_registers_signs_in_and_calls_tools(served: OAuthServer) -> None:
    account = await sign_up(served.http)
    person, storage = Person(served.url, account.email), MemoryStorage()
    async with mcp_session(served.url, mcp_host(person, storage)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"whoami", "list_connected_clients", "disconnect_client"} <= names
        who = (await client.call_tool("whoami", {})).structured_content
        assert who is not None
    assert who["auth_method"] == "oauth" and who["user"]["email"] == account.email
    assert "gpu:read" in who["scopes"] and not {"guardrails:admin", "admin"} & set(who["scopes"])
    [page] = person.consent_pages
    assert "Test MCP host" in page and "http://localhost:3030" in page
    assert storage.client_info is not None and storage.client_info.client_secret  # a confidential client
    assert storage.tokens is not None and storage.tokens.refresh_token is not None
    token = storage.tokens.access_token

    spending = await served.http.get("/api/v1/guardrails/spending", headers=bearer(token))
    assert spending.status_code == 200, spending.text
    async with a2a(served.url, token) as agent:
        assert artifact_data(await run(agent, call("whoami")))["auth_method"] == "oauth"
    ws_url = "ws" + served.url.removeprefix("http") + "/ws"
    async with connect(ws_url, additional_headers=bearer(token), proxy=None, open_timeout=10) as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong"


async def test_an_mcp_host_signs_in_with_a_client_metadata_document(served: OAuthServer) -> None:
    account = await sign_up(served.http)
    person, storage = Person(served.url, account.email), MemoryStorage()
    host = mcp_host(person, storage, client_metadata_url=served.document.url)
    async with mcp_session(served.url, host) as client:
        listed = (await client.call_tool("list_connected_clients", {})).structured_content
        assert listed is not None
    [connected] = listed["clients"]
    assert connected["client_id"] == served.document.url
    assert connected["client_name"] == "Documented host"
    assert storage.client_info is not None and storage.client_info.client_id == served.document.url
    assert storage.client_info.client_secret is None  # a public client
    assert served.document.fetches == 1  # kept for a while once fetched
    [page] = person.consent_pages
    assert "Documented host" in page


async def test_the_console_lists_an_app_and_disconnects_it_at_once(served: OAuthServer) -> None:
    account = await sign_up(served.http)
    storage = MemoryStorage()
    async with mcp_session(served.url, mcp_host(Person(served.url, account.email), storage)) as client:
        await client.list_tools()
    assert storage.tokens is not None and storage.client_info is not None
    token = storage.tokens.access_token
    async with httpx.AsyncClient(base_url=served.url, timeout=30, trust_env=False) as browser:
        await console_sign_in(browser, account.email)
        page = await browser.get("/console/connections")
        assert page.status_code == 200 and "Test MCP host" in page.text
        form = {"csrf_token": csrf_of(page.text), "client_id": storage.client_info.client_id}
        disconnected = await browser.post("/console/connections/disconnect", data=form)
        assert disconnected.status_code == 303
        after = await browser.get(disconnected.headers["location"])
        assert "App disconnected." in after.text and "Test MCP host" not in after.text
    refused = await served.http.post(MCP_PATH, json=INITIALIZE, headers={**MCP_HEADERS, **bearer(token)})
    assert refused.status_code == 401, refused.text
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


async def test_the_consent_page_needs_a_signed_in_person(served: OAuthServer) -> None:
    async with httpx.AsyncClient(base_url=served.url, trust_env=False) as browser:
        page = await browser.get("/console/oauth/consent?request=abc")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/sign-in?next=%2Fconsole%2Foauth%2Fconsent")
