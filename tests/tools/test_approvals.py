"""Approvals end to end over HTTP, on a served app renting from a local vast.ai: an agent's key asks, the
call answers 202 with the pending approval and spends nothing, the owner approves (the call runs once) or
denies, approvals expire, and an MCP client without elicitation gets an isError APPROVAL_REQUIRED."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from tests.conftest import Account, free_port, funded, serve, sign_up
from tests.fakes.vastai_server import API_KEY, VastAiState, vastai_app
from tests.gpu.test_market import VAST_OFFERS, vast_offer
from tests.mcp_clients import mcp_client

RENT_4090 = "/api/v1/gpu/instances/vastai/101"  # 1x RTX 4090 at $0.35/h
RENT_H100 = "/api/v1/gpu/instances/vastai/103"  # 1x H100 SXM at $2.40/h
POLICY = "/api/v1/guardrails/approvals/policy"


@dataclass
class Platform:
    url: str
    http: httpx.AsyncClient
    vast: VastAiState
    owner: Account
    agent: dict[str, str]  # an agent's key made without naming scopes, as headers
    agent_key_id: str

    async def policy(self, headers: dict[str, str], **body: Any) -> httpx.Response:
        return await self.http.put(POLICY, json=body, headers=headers)

    async def decide(self, approval_id: str, decision: str, headers: dict[str, str] | None = None) -> Any:
        answer = await self.http.post(
            f"/api/v1/approvals/{approval_id}",
            json={"decision": decision},
            headers=headers or self.owner.headers,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def spent(self) -> float:
        spending = await self.http.get("/api/v1/guardrails/spending", headers=self.owner.headers)
        return float(spending.json()["window_spent"])

    async def held(self) -> float:
        ledger = await self.http.get("/api/v1/billing/transactions", headers=self.owner.headers)
        return float(ledger.json()["held"])


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Platform]:
    """The app on a loopback port, renting from a local vast.ai, with a funded owner and their agent's key."""
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], shows_until_running=0)
    async with serve(vastai_app(vast)) as vast_url:
        port = free_port()
        configured = settings.model_copy(
            update={
                "port": port,
                "vastai_url": vast_url,
                "vastai_api_key": SecretStr(API_KEY),
                "billing_sandbox": True,
            }
        )
        async with (
            serve(create_app(configured), port) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            owner = await funded(http)
            made = await http.post("/api/v1/auth/apikey", json={"name": "agent"}, headers=owner.headers)
            assert made.status_code == 201, made.text
            key = made.json()
            yield Platform(url, http, vast, owner, {"Authorization": f"Bearer {key['api_key']}"}, key["id"])


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with served(settings) as platform:
        yield platform


async def pending(answer: httpx.Response) -> dict[str, Any]:
    """The approval a held call answered with (202), checked against the contract."""
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["code"] == "APPROVAL_REQUIRED" and body["approval"] == body["details"]["approval"]
    approval: dict[str, Any] = body["approval"]
    assert set(approval) == {
        "id",
        "status",
        "action",
        "arguments",
        "amount",
        "description",
        "expires_at",
        "url",
    }
    assert approval["status"] == "pending" and approval["id"] in body["error"]
    return approval


async def test_a_held_rent_spends_nothing_until_approved_then_runs_once(platform: Platform) -> None:
    assert (await platform.policy(platform.owner.headers, mode="always")).json()["mode"] == "always"
    approval = await pending(
        await platform.http.post(RENT_4090, json={"duration_hours": 3}, headers=platform.agent)
    )
    assert approval["action"] == "rent_gpu_instance" and approval["amount"] == pytest.approx(1.05)
    assert approval["description"] == "Rent 1x RTX 4090 on vastai at $0.35/h for 3 h ($1.05)"
    assert approval["arguments"] == {"duration_hours": 3, "provider": "vastai", "instance_id": "101"}
    assert approval["url"] == f"{platform.url}/console/approvals/{approval['id']}"
    assert platform.vast.create_payloads == {} and await platform.spent() == 0 and await platform.held() == 0
    contracts = await platform.http.get("/api/v1/gpu/contracts?active=false", headers=platform.owner.headers)
    assert contracts.json()["count"] == 0

    path = f"/api/v1/approvals/{approval['id']}"
    polled = (await platform.http.get(path, headers=platform.agent)).json()
    assert polled["status"] == "pending" and polled["requested_by"]["via"] == "api_key"
    assert polled["requested_by"]["api_key_id"] == platform.agent_key_id
    own = await platform.http.post(path, json={"decision": "approve"}, headers=platform.agent)
    assert own.status_code == 403 and own.json()["details"]["required_scope"] == "guardrails:admin"

    done = await platform.decide(approval["id"], "approve")
    assert done["status"] == "executed" and done["error"] is None and done["decided_at"]
    contract = done["result"]
    assert contract["offer_id"] == "101" and contract["duration_hours"] == 3
    assert list(platform.vast.create_payloads) == ["101"]
    assert await platform.spent() == pytest.approx(1.05) and await platform.held() == pytest.approx(1.05)
    again = await platform.decide(approval["id"], "approve")
    assert again["status"] == "executed" and again["result"] == contract
    assert len(platform.vast.instances) == 1
    listed = (await platform.http.get("/api/v1/approvals", headers=platform.agent)).json()
    assert [(a["id"], a["status"]) for a in listed["approvals"]] == [(approval["id"], "executed")]


async def test_a_denied_approval_spends_nothing(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="always")
    held = await platform.http.post(
        "/api/v1/guardrails/spending/record", json={"amount": 25.5}, headers=platform.agent
    )
    approval = await pending(held)
    assert approval["description"] == "Record $25.50 spent outside this platform"
    assert (await platform.decide(approval["id"], "deny"))["status"] == "denied"
    assert (await platform.decide(approval["id"], "approve"))["status"] == "denied"
    assert await platform.spent() == 0


async def test_two_concurrent_approvals_run_the_rent_once(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="always")
    approval = await pending(await platform.http.post(RENT_H100, json={}, headers=platform.agent))
    first, second = await asyncio.gather(
        platform.decide(approval["id"], "approve"), platform.decide(approval["id"], "approve")
    )
    assert {first["status"], second["status"]} <= {"executing", "executed"}
    assert "executed" in (first["status"], second["status"])
    assert list(platform.vast.create_payloads) == ["103"] and len(platform.vast.instances) == 1
    assert await platform.spent() == pytest.approx(2.4)


async def test_an_expired_approval_spends_nothing(settings: Settings) -> None:
    async with served(settings.model_copy(update={"approval_ttl_s": 0.3})) as platform:
        await platform.policy(platform.owner.headers, mode="always")
        approval = await pending(await platform.http.post(RENT_4090, json={}, headers=platform.agent))
        await asyncio.sleep(0.5)
        path = f"/api/v1/approvals/{approval['id']}"
        assert (await platform.http.get(path, headers=platform.agent)).json()["status"] == "expired"
        assert (await platform.decide(approval["id"], "approve"))["status"] == "expired"
        assert platform.vast.create_payloads == {} and await platform.spent() == 0


async def test_an_agents_key_cannot_loosen_a_policy_but_may_tighten_its_own(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="above", threshold=5)
    for looser in ({"mode": "never"}, {"mode": "above", "threshold": 50}):
        refused = await platform.policy(platform.agent, **looser)
        assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    tighter = await platform.policy(platform.agent, mode="above", threshold=1)
    assert tighter.status_code == 200 and tighter.json()["threshold"] == 1.0
    own = await platform.policy(platform.agent, mode="always", api_key_id=platform.agent_key_id)
    assert own.json() == {
        "scope": "api_key",
        "api_key_id": platform.agent_key_id,
        "client_id": None,
        "mode": "always",
        "threshold": None,
    }
    read = await platform.http.get(
        POLICY, params={"api_key_id": platform.agent_key_id}, headers=platform.agent
    )
    assert read.json()["mode"] == "always"
    await pending(await platform.http.post(RENT_4090, json={}, headers=platform.agent))  # its own policy
    by_owner = await platform.http.post(RENT_4090, json={}, headers=platform.owner.headers)
    assert by_owner.status_code == 201, by_owner.text  # $0.35 is under the account's threshold of $1
    bad = await platform.policy(platform.owner.headers, mode="above")
    assert bad.status_code == 400 and bad.json()["code"] == "VALIDATION_ERROR"
    unknown = await platform.policy(platform.owner.headers, mode="always", client_id="https://app.example")
    assert unknown.status_code == 404


async def test_above_a_threshold_small_spends_go_through(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="above", threshold=2)
    small = await platform.http.post(RENT_4090, json={"duration_hours": 2}, headers=platform.agent)
    assert small.status_code == 201, small.text
    approval = await pending(await platform.http.post(RENT_H100, json={}, headers=platform.agent))
    assert approval["amount"] == pytest.approx(2.4)
    assert list(platform.vast.create_payloads) == ["101"]


async def test_reserve_and_batch_are_quoted_at_the_best_offers_now(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="always")
    reserve = {"count": 2, "filters": {"gpu_model": "RTX 4090", "provider": "vastai"}}
    approval = await pending(
        await platform.http.post("/api/v1/gpu/instances/reserve", json=reserve, headers=platform.agent)
    )
    assert approval["amount"] == pytest.approx(1.15) and approval["action"] == "reserve_gpus"
    assert approval["description"].startswith("Reserve 2 instances for 1 h ($1.15 at the offers that rank")
    assert "1x RTX 4090 on vastai at $0.35/h" in approval["description"]
    batch = {"vastai_count": 5, "filters": {"gpu_model": "H100"}, "config": {"duration_hours": 2}}
    batched = await pending(
        await platform.http.post("/api/v1/gpu/instances/batch", json=batch, headers=platform.agent)
    )
    assert batched["amount"] == pytest.approx(4.8)
    assert batched["description"].startswith("Rent 5 instances for 2 h ($4.80 at the offers that rank")
    assert "only 1 matching offer now" in batched["description"]
    assert platform.vast.create_payloads == {}
    done = await platform.decide(approval["id"], "approve")
    assert done["status"] == "executed" and done["result"]["count"] == 2
    assert sorted(platform.vast.create_payloads) == ["101", "102"]


async def test_a_revoked_key_fails_its_approval_and_others_cannot_see_it(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="always")
    approval = await pending(await platform.http.post(RENT_4090, json={}, headers=platform.agent))
    stranger = await sign_up(platform.http)
    path = f"/api/v1/approvals/{approval['id']}"
    for answer in (
        await platform.http.get(path, headers=stranger.headers),
        await platform.http.post(path, json={"decision": "approve"}, headers=stranger.headers),
    ):
        assert answer.status_code == 404 and answer.json()["code"] == "NOT_FOUND"
    revoked = await platform.http.delete(
        f"/api/v1/auth/apikey/{platform.agent_key_id}", headers=platform.owner.headers
    )
    assert revoked.status_code == 200
    failed = await platform.decide(approval["id"], "approve")
    assert failed["status"] == "failed" and failed["error"]["code"] == "AUTH_INVALID"
    assert platform.vast.create_payloads == {} and await platform.spent() == 0


async def test_mcp_without_elicitation_gets_approval_required(platform: Platform) -> None:
    await platform.policy(platform.owner.headers, mode="always")
    key = platform.agent["Authorization"].removeprefix("Bearer ")
    async with mcp_client(platform.url, key, "streamable-legacy") as client:
        held = await client.call_tool(
            "rent_gpu_instance", {"provider": "vastai", "instance_id": "vastai:101"}
        )
        assert held.is_error is True
        body = json.loads(held.content[0].text)  # type: ignore[union-attr]
        assert body["code"] == "APPROVAL_REQUIRED" and body["details"]["approval"]["status"] == "pending"
        approval_id = body["details"]["approval"]["id"]
        polled = await client.call_tool("get_approval", {"approval_id": approval_id})
        assert polled.is_error is not True and polled.structured_content is not None
        assert polled.structured_content["status"] == "pending"
        refused = await client.call_tool(
            "decide_approval", {"approval_id": approval_id, "decision": "approve"}
        )
        assert refused.is_error is True and "FORBIDDEN" in refused.content[0].text  # type: ignore[union-attr]
    assert platform.vast.create_payloads == {}
