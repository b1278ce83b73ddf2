"""The conformance suite's 2026-07-28 input-required fixtures, driven by the official SDK client (which
answers input requests through its callbacks and retries), and a tampered ``requestState`` refused."""

from __future__ import annotations

import json
from typing import Any

import httpx
from mcp import types
from mcp.client.session import ClientRequestContext

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from tests.conftest import serve, sign_up
from tests.mcp_clients import mcp_client

MODERN = "2026-07-28"


async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert isinstance(params, types.ElicitRequestFormParams)
    [field] = params.requested_schema["properties"]
    answers: dict[str, Any] = {"name": "Ada", "color": "green", "ok": True, "context": "GPUs"}
    return types.ElicitResult(action="accept", content={field: answers[field]})


async def sample(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    reply = types.TextContent(type="text", text="Paris")
    return types.CreateMessageResult(role="assistant", content=reply, model="test-model")


async def roots(context: ClientRequestContext) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work")])


def text_of(result: types.CallToolResult) -> str:
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return content.text


async def test_input_required_fixtures(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"mcp_conformance_fixtures": True}))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        owner = await sign_up(http)
        callbacks: dict[str, Any] = {
            "elicitation_callback": elicit,
            "sampling_callback": sample,
            "list_roots_callback": roots,
        }
        async with mcp_client(url, owner.access_token, **callbacks) as client:
            assert client.protocol_version == MODERN
            call = client.call_tool
            assert text_of(await call("test_input_required_result_elicitation", {})) == "Hello, Ada!"
            assert text_of(await call("test_input_required_result_sampling", {})) == "Sampling result: Paris"
            assert text_of(await call("test_input_required_result_list_roots", {})) == "Found 1 root(s)"
            confirmed = await call("test_input_required_result_request_state", {})
            assert text_of(confirmed) == "state-ok: requestState validated"
            both = await call("test_input_required_result_multiple_inputs", {})
            assert text_of(both) == "Name: Ada; Greeting: Paris; Roots: 1"
            rounds = await call("test_input_required_result_multi_round", {})
            assert text_of(rounds) == "Multi-round complete for Ada who likes green"
            prompt = await client.get_prompt("test_input_required_result_prompt")
            assert prompt.messages[0].content == types.TextContent(
                type="text", text="Prompt with context: GPUs"
            )

        headers = {
            "Authorization": f"Bearer {owner.access_token}",
            "Accept": "application/json",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "test_input_required_result_tampered_state",
        }
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
        }
        params: dict[str, Any] = {"name": headers["Mcp-Name"], "arguments": {}, "_meta": meta}
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        first = (await http.post(MCP_PATH, json=message, headers=headers)).json()["result"]
        state = first["requestState"]
        assert first["resultType"] == "input_required" and "tamper-test" not in state  # sealed
        answers = {"confirm": {"action": "accept", "content": {"ok": True}}}
        params.update(
            inputResponses=answers, requestState=state[:-4] + ("AAAA" if state[-4:] != "AAAA" else "BBBB")
        )
        tampered = await http.post(MCP_PATH, json=message, headers=headers)
        assert tampered.json()["error"]["code"] == types.INVALID_PARAMS, tampered.text
        params["requestState"] = state
        verified = (await http.post(MCP_PATH, json=message, headers=headers)).json()["result"]
    assert verified["content"] == [{"type": "text", "text": "integrity-ok: state verified"}], json.dumps(
        verified
    )
