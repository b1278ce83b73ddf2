"""Approvals asked the MCP way, with the official SDK client against a served app and a local vast.ai: form
elicitation on 2025-11-25 over sessionful Streamable HTTP, legacy SSE and stdio (approve, deny, decline),
URL elicitation, clients that cannot be asked (isError APPROVAL_REQUIRED, also on Streamable HTTP with
``AISERVE_MCP_STATELESS``), and the 2026-07-28 input-required round trip, through
the SDK client and as raw JSON-RPC (a tampered, moved or foreign requestState is refused; answering twice
rents once)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext, ClientSession, ElicitationFnT
from mcp.types import ClientCapabilities, ElicitationCapability, ElicitRequestParams, ElicitResult, ErrorData
from mcp.types import UrlElicitationCapability as UrlMode
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from tests.conftest import Account, api_key, funded, serve
from tests.fakes.vastai_server import API_KEY, VastAiState, vastai_app
from tests.gpu.test_market import VAST_OFFERS, vast_offer
from tests.mcp_clients import Transport, mcp_client

RENT = {"provider": "vastai", "instance_id": "101", "duration_hours": 3}
QUESTION = "Rent 1x RTX 4090 on vastai at $0.35/h for 3 h ($1.05)?"
Action = Literal["accept", "decline", "cancel"]


@dataclass
class Market:
    """The app against a local vast.ai; ``owner`` has credits and the approval policy ``always``, and
    ``key`` is an API key of theirs with the default scopes (an agent's)."""

    url: str
    vast: VastAiState
    owner: Account
    key: str
    settings: Settings

    @property
    def rentals(self) -> int:
        return sum(1 for method, path in self.vast.requests if method == "PUT" and "/asks/" in path)

    async def approvals(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.url) as http:
            listed = await http.get("/api/v1/approvals", headers=self.owner.headers)
        assert listed.status_code == 200, listed.text
        approvals: list[dict[str, Any]] = listed.json()["approvals"]
        return approvals


@asynccontextmanager
async def market_with_approvals(settings: Settings) -> AsyncIterator[Market]:
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], shows_until_running=0)
    async with serve(vastai_app(vast)) as vast_url:
        market = settings.model_copy(
            update={"vastai_url": vast_url, "vastai_api_key": SecretStr(API_KEY), "billing_sandbox": True}
        )
        async with serve(create_app(market)) as url, httpx.AsyncClient(base_url=url) as http:
            owner = await funded(http)
            policy = await http.put(
                "/api/v1/guardrails/approvals/policy", json={"mode": "always"}, headers=owner.headers
            )
            assert policy.status_code == 200, policy.text
            yield Market(url, vast, owner, await api_key(http, owner), market)


@pytest.fixture
async def market(settings: Settings) -> AsyncIterator[Market]:
    async with market_with_approvals(settings) as started:
        yield started


def answering(
    asked: list[ElicitRequestParams], action: Action, decision: str | None = None
) -> ElicitationFnT:
    """An elicitation callback that records each question and answers ``action`` (with ``decision``)."""

    async def answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        asked.append(params)
        content: dict[str, Any] | None = {"decision": decision} if decision is not None else None
        return ElicitResult(action=action, content=content)

    return answer


def body_of(result: Any) -> dict[str, Any]:
    assert result.is_error is True, result
    body = json.loads(result.content[0].text)
    assert isinstance(body, dict)
    return body


def assert_asked(asked: list[ElicitRequestParams]) -> None:
    [question] = asked
    assert question.mode == "form" and question.message == QUESTION
    schema = question.requested_schema
    assert schema["required"] == ["decision"]
    assert schema["properties"]["decision"]["enum"] == ["approve", "deny"]


ANSWERS = [("accept", "approve"), ("accept", "deny"), ("decline", None), ("cancel", None)]


@pytest.mark.parametrize("transport", ["streamable-legacy", "sse-legacy"])
@pytest.mark.parametrize(("action", "decision"), ANSWERS)
async def test_form_elicitation_over_a_session(
    market: Market, transport: Transport, action: Action, decision: str | None
) -> None:
    """Streamable HTTP (a session, which 2025-11-25 clients get by default) and legacy SSE."""
    asked: list[ElicitRequestParams] = []
    callback = answering(asked, action, decision)
    async with mcp_client(market.url, market.key, transport, elicitation_callback=callback) as client:
        result = await client.call_tool("rent_gpu_instance", RENT)
    assert_asked(asked)
    [approval] = await market.approvals()
    if decision == "approve":
        assert result.is_error is not True, result
        assert result.structured_content is not None
        assert (
            result.structured_content["offer_id"] == "101"
            and result.structured_content["duration_hours"] == 3
        )
        assert market.rentals == 1
        assert approval["status"] == "executed" and approval["result"] == result.structured_content
        return
    body = body_of(result)
    assert body["code"] == "FORBIDDEN" and body["details"]["approval"]["status"] == "denied"
    assert body["details"]["approval"]["id"] == approval["id"]
    assert market.rentals == 0 and approval["status"] == "denied"


@pytest.mark.parametrize(("action", "decision"), [("accept", "approve"), ("decline", None)])
async def test_form_elicitation_over_stdio(
    market: Market, server_env: dict[str, str], action: Action, decision: str | None
) -> None:
    settings = market.settings
    assert settings.vastai_url is not None
    env: dict[str, Any] = {
        **server_env,
        "AISERVE_API_KEY": market.key,
        "AISERVE_VASTAI_URL": settings.vastai_url,
        "AISERVE_VASTAI_API_KEY": API_KEY,
        "AISERVE_PUBLIC_URL": market.url,
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "aiserve_mcp", "mcp"], env=env)
    asked: list[ElicitRequestParams] = []
    async with Client(
        params, mode="legacy", elicitation_callback=answering(asked, action, decision)
    ) as client:
        result = await client.call_tool("rent_gpu_instance", RENT)
    assert_asked(asked)
    [approval] = await market.approvals()
    if decision == "approve":
        assert result.is_error is not True and result.structured_content is not None, result
        assert approval["status"] == "executed" and approval["result"] == result.structured_content
        assert market.rentals == 1
    else:
        assert body_of(result)["code"] == "FORBIDDEN"
        assert approval["status"] == "denied" and market.rentals == 0


async def assert_pending_until_decided(market: Market, transport: Transport, asks: bool) -> None:
    """The call answers APPROVAL_REQUIRED without asking, and the agent polls get_approval while the owner
    decides."""
    asked: list[ElicitRequestParams] = []
    callback = answering(asked, "accept", "approve") if asks else None
    async with mcp_client(market.url, market.key, transport, elicitation_callback=callback) as client:
        body = body_of(await client.call_tool("rent_gpu_instance", RENT))
        assert body["code"] == "APPROVAL_REQUIRED" and not asked
        approval = body["approval"]
        assert approval["status"] == "pending" and approval["description"] + "?" == QUESTION
        assert approval["url"].endswith(f"/console/approvals/{approval['id']}")
        async with httpx.AsyncClient(base_url=market.url) as http:
            decided = await http.post(
                f"/api/v1/approvals/{approval['id']}",
                json={"decision": "approve"},
                headers=market.owner.headers,
            )
        assert decided.status_code == 200, decided.text
        polled = await client.call_tool("get_approval", {"approval_id": approval["id"]})
    assert polled.structured_content is not None and polled.structured_content["status"] == "executed"
    assert market.rentals == 1


@pytest.mark.parametrize("transport", ["sse-legacy", "streamable-legacy", "streamable-modern"])
async def test_a_client_that_cannot_be_asked_gets_the_pending_approval(
    market: Market, transport: Transport
) -> None:
    """No elicitation declared, in either era."""
    await assert_pending_until_decided(market, transport, asks=False)


async def test_stateless_streamable_http_cannot_ask(settings: Settings) -> None:
    """With ``AISERVE_MCP_STATELESS`` a 2025-11-25 client gets no session, so there is no channel for the
    question even though it declared elicitation."""
    async with market_with_approvals(settings.model_copy(update={"mcp_stateless": True})) as market:
        await assert_pending_until_decided(market, "streamable-legacy", asks=True)


@pytest.fixture
def url_mode_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDK clients declare URL elicitation only (the SDK declares both modes with an elicitation callback)."""
    declared = ClientSession._build_capabilities

    def url_only(self: ClientSession, version: str) -> ClientCapabilities:
        capabilities = declared(self, version)
        if capabilities.elicitation is None:
            return capabilities
        return capabilities.model_copy(update={"elicitation": ElicitationCapability(url=UrlMode())})

    monkeypatch.setattr(ClientSession, "_build_capabilities", url_only)


@pytest.mark.usefixtures("url_mode_only")
@pytest.mark.parametrize("action", ["accept", "decline"])
async def test_url_elicitation_opens_the_console_page(market: Market, action: Action) -> None:
    asked: list[ElicitRequestParams] = []
    callback = answering(asked, action)
    async with mcp_client(market.url, market.key, "sse-legacy", elicitation_callback=callback) as client:
        body = body_of(await client.call_tool("rent_gpu_instance", RENT))
    [question] = asked
    [approval] = await market.approvals()
    assert question.mode == "url" and question.url == approval["url"]
    assert question.elicitation_id == approval["id"] and question.message.startswith(QUESTION)
    if action == "accept":  # the page is open: the owner decides there, the agent polls
        assert body["code"] == "APPROVAL_REQUIRED" and body["approval"]["id"] == approval["id"]
        assert approval["status"] == "pending"
    else:
        assert body["code"] == "FORBIDDEN" and approval["status"] == "denied"
    assert market.rentals == 0


@pytest.mark.parametrize(("decision", "rentals"), [("approve", 1), ("deny", 0)])
async def test_input_required_through_the_sdk_client(market: Market, decision: str, rentals: int) -> None:
    asked: list[ElicitRequestParams] = []
    callback = answering(asked, "accept", decision)
    async with mcp_client(market.url, market.key, elicitation_callback=callback) as client:
        assert client.protocol_version == "2026-07-28"
        result = await client.call_tool("rent_gpu_instance", RENT)
    assert_asked(asked)
    [approval] = await market.approvals()
    assert market.rentals == rentals
    if decision == "approve":
        assert result.structured_content is not None and approval["result"] == result.structured_content
    else:
        assert body_of(result)["code"] == "FORBIDDEN" and approval["status"] == "denied"


MODERN = "2026-07-28"


@dataclass
class RawModernClient:
    """Hand-written 2026-07-28 ``tools/call`` requests of ``rent_gpu_instance`` (stateless, JSON answers)
    from a client that declares form elicitation."""

    http: httpx.AsyncClient
    credential: str

    async def call(self, arguments: dict[str, Any], **params: Any) -> dict[str, Any]:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
        }
        message = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "rent_gpu_instance", "arguments": arguments, "_meta": meta, **params},
        }
        headers = {
            "Authorization": f"Bearer {self.credential}",
            "Accept": "application/json",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "rent_gpu_instance",
        }
        response = await self.http.post(MCP_PATH, json=message, headers=headers)
        body: dict[str, Any] = response.json()
        assert response.status_code == (400 if "error" in body else 200), response.text
        return body

    async def answer(self, state: str, decision: str, arguments: dict[str, Any] = RENT) -> dict[str, Any]:
        answers = {"approval": {"action": "accept", "content": {"decision": decision}}}
        return await self.call(arguments, requestState=state, inputResponses=answers)


def refused_state(body: dict[str, Any]) -> bool:
    error = body.get("error", {})
    return bool(error.get("code") == -32602 and error.get("message") == "Invalid or expired requestState")


async def test_input_required_as_raw_json_rpc(market: Market) -> None:
    """The round trip on the wire: the question and a sealed state; a state that was tampered with, moved
    to other arguments or sent by another credential is refused; answering again after the rent returns
    the stored result instead of renting twice."""
    async with httpx.AsyncClient(base_url=market.url, timeout=30) as http:
        agent = RawModernClient(http, market.key)
        first = (await agent.call(RENT))["result"]
        assert first["resultType"] == "input_required"
        question = first["inputRequests"]["approval"]
        assert question["method"] == "elicitation/create" and question["params"]["message"] == QUESTION
        assert question["params"]["requestedSchema"]["properties"]["decision"]["enum"] == ["approve", "deny"]
        state = first["requestState"]
        assert state.startswith("v1.") and "apr_" not in state  # sealed and encrypted

        tampered = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
        assert refused_state(await agent.answer(tampered, "approve"))
        assert refused_state(await agent.answer(state, "approve", {**RENT, "duration_hours": 1}))
        other_key = RawModernClient(http, await api_key(http, market.owner))
        assert refused_state(await other_key.answer(state, "approve"))
        assert market.rentals == 0 and (await market.approvals())[0]["status"] == "pending"

        unanswered = (await agent.call(RENT, requestState=state))["result"]  # a state-only retry: asked again
        assert unanswered["resultType"] == "input_required"
        assert unanswered["inputRequests"]["approval"]["params"]["message"] == QUESTION

        rented = (await agent.answer(state, "approve"))["result"]
        assert rented["resultType"] == "complete" and rented.get("isError") is not True
        contract = rented["structuredContent"]
        assert contract["offer_id"] == "101" and market.rentals == 1
        again = (await agent.answer(state, "approve"))["result"]
        denied_late = (await agent.answer(state, "deny"))["result"]
    assert again["structuredContent"] == denied_late["structuredContent"] == contract
    assert market.rentals == 1
    [approval] = await market.approvals()
    assert approval["status"] == "executed" and approval["result"] == contract
