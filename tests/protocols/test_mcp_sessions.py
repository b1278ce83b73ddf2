"""Streamable HTTP sessions (``Mcp-Session-Id``): a 2025-11-25 ``initialize`` opens one, the client's
later requests reuse it, only the credential that opened it may use it (another user's, or another key
of the same user, is answered 404 as if it did not exist), DELETE ends it, 2026-07-28 clients and bare
JSON-RPC POSTs stay stateless, and ``AISERVE_MCP_STATELESS`` opens none; a legacy SSE session is bound
to its credential the same way; the conformance fixtures that
ask the client (sampling, elicitation) over a session."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest
from mcp import types
from mcp.client.session import ClientRequestContext

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.http import MCP_PATH, SSE_PATH
from tests.conftest import LiveServer, api_key, serve, sign_up
from tests.mcp_clients import Transport, mcp_client

LEGACY = "2025-11-25"
HEADERS = {"Accept": "application/json", "MCP-Protocol-Version": LEGACY}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
WHOAMI = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
SESSION = "mcp-session-id"


def bearer(credential: str, session_id: str | None = None) -> dict[str, str]:
    session = {SESSION: session_id} if session_id is not None else {}
    return {**HEADERS, "Authorization": f"Bearer {credential}", **session}


async def opened(http: httpx.AsyncClient, credential: str) -> str:
    """A new session of ``credential``, initialized."""
    answer = await http.post(MCP_PATH, json=INITIALIZE, headers=bearer(credential))
    assert answer.status_code == 200, answer.text
    session_id = answer.headers[SESSION]
    notified = await http.post(MCP_PATH, json=INITIALIZED, headers=bearer(credential, session_id))
    assert notified.status_code == 202, notified.text
    return session_id


async def test_a_session_answers_its_own_credential_only(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner, stranger = await sign_up(http), await sign_up(http)
        key, other_key = await api_key(http, owner), await api_key(http, owner)
        session_id = await opened(http, key)

        called = await http.post(MCP_PATH, json=WHOAMI, headers=bearer(key, session_id))
        assert called.status_code == 200, called.text
        assert called.json()["result"]["structuredContent"]["user"]["email"] == owner.email

        for credential in (stranger.access_token, other_key, owner.access_token):
            refused = await http.post(MCP_PATH, json=WHOAMI, headers=bearer(credential, session_id))
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["message"] == "Session not found"
            ended = await http.delete(MCP_PATH, headers=bearer(credential, session_id))
            assert ended.status_code == 404, ended.text

        ended = await http.delete(MCP_PATH, headers=bearer(key, session_id))
        assert ended.status_code == 200, ended.text
        gone = await http.post(MCP_PATH, json=WHOAMI, headers=bearer(key, session_id))
        assert gone.status_code == 404, gone.text
        unknown = await http.post(MCP_PATH, json=WHOAMI, headers=bearer(key, "0" * 32))
        assert unknown.status_code == 404, unknown.text


async def session_ids_seen(url: str, credential: str, transport: Transport) -> list[str | None]:
    """The ``Mcp-Session-Id`` of every response the SDK client gets while it lists tools and calls one."""
    seen: list[str | None] = []

    async def record(response: httpx2.Response) -> None:
        seen.append(response.headers.get(SESSION))

    async with mcp_client(url, credential, transport, on_response=record) as client:
        await client.list_tools()
        assert (await client.call_tool("whoami", {})).is_error is not True
    return seen


async def test_the_sdk_client_reuses_its_session(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        owner = await sign_up(http)
    seen = await session_ids_seen(live_server.url, owner.access_token, "streamable-legacy")
    [session_id] = {s for s in seen if s is not None}
    assert seen[0] == session_id  # issued on initialize, then named by every request
    assert not [
        s for s in await session_ids_seen(live_server.url, owner.access_token, "streamable-modern") if s
    ]


async def test_bare_posts_stay_stateless(live_server: LiveServer) -> None:
    """Without a session id, anything but ``initialize`` is answered at once, with no session."""
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        owner = await sign_up(http)
        called = await http.post(MCP_PATH, json=WHOAMI, headers=bearer(owner.access_token))
    assert called.status_code == 200 and SESSION not in called.headers, called.text
    assert called.json()["result"]["structuredContent"]["user"]["email"] == owner.email


async def test_the_stateless_setting_opens_no_sessions(settings: Settings) -> None:
    async with serve(create_app(settings.model_copy(update={"mcp_stateless": True}))) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            owner = await sign_up(http)
            answer = await http.post(MCP_PATH, json=INITIALIZE, headers=bearer(owner.access_token))
            assert answer.status_code == 200 and SESSION not in answer.headers, answer.text
        seen: list[Any] = await session_ids_seen(url, owner.access_token, "streamable-legacy")
    assert seen and not [s for s in seen if s]


ELICITED: dict[str, dict[str, Any]] = {
    "test_elicitation": {"response": "yes"},
    "test_elicitation_sep1034_defaults": {"name": "Jane Smith", "age": 25},
    "test_elicitation_sep1330_enums": {"untitledSingle": "option1", "titledMulti": ["value1", "value2"]},
}


@pytest.mark.parametrize("transport", ["streamable-legacy", "sse-legacy"])
async def test_conformance_fixtures_that_ask_the_client(transport: Transport, settings: Settings) -> None:
    """``test_sampling`` and the elicitation fixtures send their request on the session and answer with
    the client's reply."""
    asked: list[types.ElicitRequestParams] = []
    prompts: list[types.CreateMessageRequestParams] = []

    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content=ELICITED[tool])

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        prompts.append(params)
        reply = types.TextContent(type="text", text="from the client")
        return types.CreateMessageResult(role="assistant", content=reply, model="test-model")

    async with serve(create_app(settings.model_copy(update={"mcp_conformance_fixtures": True}))) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            owner = await sign_up(http)
        async with mcp_client(
            url, owner.access_token, transport, elicitation_callback=elicit, sampling_callback=sample
        ) as client:
            sampled = await client.call_tool("test_sampling", {"prompt": "Test prompt"})
            answers = {}
            for tool in ELICITED:
                answers[tool] = await client.call_tool(tool, {"message": "Please provide your information"})
    [prompt] = prompts
    assert prompt.max_tokens == 100 and prompt.messages[0].content == types.TextContent(
        type="text", text="Test prompt"
    )
    assert sampled.content == [types.TextContent(type="text", text="LLM response: from the client")]
    assert [question.message for question in asked] == [
        "Please provide your information",
        "Please review and update the form fields with defaults",
        "Please select options from the enum fields",
    ]
    defaults = asked[1].requested_schema["properties"]  # type: ignore[union-attr]
    assert defaults["name"]["default"] == "John Doe" and defaults["verified"]["default"] is True
    enums = asked[2].requested_schema["properties"]  # type: ignore[union-attr]
    assert enums["legacyEnum"]["enumNames"] == ["Option One", "Option Two", "Option Three"]
    assert enums["titledSingle"]["oneOf"][0] == {"const": "value1", "title": "First Option"}
    assert enums["titledMulti"]["items"]["anyOf"][2] == {"const": "value3", "title": "Third Choice"}
    assert answers["test_elicitation"].content == [
        types.TextContent(type="text", text='User response: action=accept, content={"response":"yes"}')
    ]
    reply = answers["test_elicitation_sep1034_defaults"].content[0]
    assert isinstance(reply, types.TextContent)
    assert reply.text == 'Elicitation completed: action=accept, content={"name":"Jane Smith","age":25}'


async def test_a_legacy_sse_session_answers_its_own_credential_only(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner, stranger = await sign_up(http), await sign_up(http)
        async with http.stream("GET", SSE_PATH, headers=owner.headers) as stream:
            lines = stream.aiter_lines()
            endpoint = ""
            while not endpoint.startswith("data: "):
                endpoint = await anext(lines)
            messages = endpoint.removeprefix("data: ")
            refused = await http.post(messages, json=INITIALIZE, headers=stranger.headers)
            assert refused.status_code == 404, refused.text
            accepted = await http.post(messages, json=INITIALIZE, headers=owner.headers)
            assert accepted.status_code == 202, accepted.text
