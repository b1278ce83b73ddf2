"""The GPU market through the REST routes and MCP: offers from both marketplaces at once, renting, owned
contracts, reserve and batch, against local servers that speak vast.ai's and io.net's APIs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from starlette.applications import Starlette

from aiserve_mcp.app import create_app
from aiserve_mcp.bootstrap import Services
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.gpu.contracts import ACTIVE
from aiserve_mcp.gpu.settlement import Settlement
from aiserve_mcp.money.guardrails import grant_scope
from aiserve_mcp.money.tables import LedgerHold
from tests.conftest import (
    LOCAL_REDIS_URL,
    REDIS_URL,
    Account,
    app_client,
    asgi_client,
    funded,
    running,
    serve,
    sign_up,
)
from tests.fakes.ionet_api.server import API, ionet_app
from tests.fakes.ionet_api.state import IoNetState
from tests.fakes.vastai_server import API_KEY, VastAiState, make_offers, vastai_app
from tests.mcp_clients import mcp_client

VAST_OFFERS = [
    {
        "id": 101,
        "gpu_name": "RTX 4090",
        "gpu_ram": 24564,
        "num_gpus": 1,
        "dph_base": 0.35,
        "geo": "Texas, US",
    },
    {"id": 102, "gpu_name": "RTX 4090", "gpu_ram": 24564, "num_gpus": 2, "dph_base": 0.8, "geo": "Texas, US"},
    {
        "id": 103,
        "gpu_name": "H100 SXM",
        "gpu_ram": 81559,
        "num_gpus": 1,
        "dph_base": 2.4,
        "geo": "Quebec, CA",
    },
    {"id": 104, "gpu_name": "RTX 3090", "gpu_ram": 24576, "num_gpus": 1, "dph_base": 0.2, "geo": "Texas, US"},
]


def vast_offer(spec: dict[str, object]) -> dict[str, object]:
    row = dict(make_offers(1, seed=int(str(spec["id"])))[0])
    row.update(
        id=spec["id"],
        gpu_name=spec["gpu_name"],
        gpu_ram=spec["gpu_ram"],
        num_gpus=spec["num_gpus"],
        dph_base=spec["dph_base"],
        dph_total=spec["dph_base"],
        storage_cost=0.0,
        geolocation=spec["geo"],
        verified=True,
        rentable=True,
        rented=False,
        external=False,
    )
    return row


@dataclass
class Market:
    vast: VastAiState
    ionet: IoNetState
    settings: Settings


@pytest.fixture
async def market(settings: Settings) -> AsyncIterator[Market]:
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], shows_until_running=0)
    ionet = IoNetState(polls_until_running=0)
    async with serve(vastai_app(vast)) as vast_url, serve(ionet_app(ionet)) as ionet_url:
        yield Market(
            vast,
            ionet,
            settings.model_copy(
                update={
                    "vastai_url": vast_url,
                    "vastai_api_key": SecretStr(API_KEY),
                    "ionet_url": ionet_url,
                    "ionet_api_key": SecretStr(ionet.api_key),
                    "billing_sandbox": True,
                }
            ),
        )


@pytest.fixture
async def market_app(market: Market) -> AsyncIterator[Starlette]:
    async with running(create_app(market.settings)) as app:
        yield app


@pytest.fixture
async def http(market_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(market_app) as c:
        yield c


@pytest.fixture
async def owner(http: httpx.AsyncClient) -> Account:
    return await funded(http)


def searches(state: VastAiState) -> int:
    return sum(1 for method, path in state.requests if path == "/api/v0/bundles/")


async def test_offers_from_every_provider_normalised(http: httpx.AsyncClient, owner: Account) -> None:
    answer = await http.get(
        "/api/v1/gpu/instances",
        params={"provider": "all", "min_vram": 16, "max_price": 2.5, "location": "US"},
        headers=owner.headers,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["provider"] == "all" and body["errors"] == []
    by_id = {o["id"]: o for o in body["instances"]}
    assert set(by_id) == {"vastai:101", "vastai:102", "vastai:104", "ionet:12__1", "ionet:12__2"}
    assert body["count"] == body["total"] == 5
    two = by_id["vastai:102"]
    assert (two["vram_gb"], two["num_gpus"], two["price_per_hour"], two["price_per_gpu_hour"]) == (
        24,
        2,
        0.8,
        0.4,
    )
    assert two["provider_offer"] == "102" and two["available"] is True and two["location"] == "Texas, US"
    ionet = by_id["ionet:12__2"]
    assert (ionet["gpu_model"], ionet["vram_gb"], ionet["price_per_hour"]) == ("GeForce RTX 4090", 24, 0.6)
    prices = [o["price_per_hour"] for o in body["instances"]]
    assert prices == sorted(prices)
    reports = {p["name"]: p for p in body["providers"]}
    assert reports["vastai"]["count"] == 3 and reports["ionet"]["count"] == 2
    assert reports["local"]["count"] == 0  # this host offers its CPU, which has no VRAM

    model = await http.get("/api/v1/gpu/instances", params={"gpu_model": "rtx4090"}, headers=owner.headers)
    assert {o["gpu_model"] for o in model.json()["instances"]} == {"RTX 4090", "GeForce RTX 4090"}


async def test_a_failing_provider_is_reported_beside_the_others(
    market: Market, http: httpx.AsyncClient, owner: Account
) -> None:
    market.ionet.fail_next = 100
    body = (await http.get("/api/v1/gpu/instances", headers=owner.headers)).json()
    assert {o["provider"] for o in body["instances"]} == {"vastai", "local"}
    assert [(e["provider"], e["code"]) for e in body["errors"]] == [("ionet", "UPSTREAM_ERROR")]


async def test_searches_are_cached_briefly(market: Market, http: httpx.AsyncClient, owner: Account) -> None:
    first = (await http.get("/api/v1/gpu/instances?provider=vastai", headers=owner.headers)).json()
    second = (await http.get("/api/v1/gpu/instances?provider=vastai", headers=owner.headers)).json()
    assert searches(market.vast) == 1
    assert [p["cached"] for p in (first["providers"][0], second["providers"][0])] == [False, True]
    assert second["instances"] == first["instances"]


async def test_unconfigured_marketplaces_are_listed_not_faked(settings: Settings) -> None:
    async with app_client(settings) as (_, client):
        owner = await sign_up(client)
        body = (await client.get("/api/v1/gpu/instances", headers=owner.headers)).json()
        reports = {p["name"]: p for p in body["providers"]}
        assert reports["vastai"]["configured"] is False and reports["ionet"]["configured"] is False
        assert {o["provider"] for o in body["instances"]} == {"local"}
        assert body["errors"] == []
        rent = await client.post("/api/v1/gpu/instances/vastai/101", json={}, headers=owner.headers)
        assert rent.status_code == 503 and "AISERVE_VASTAI_API_KEY" in rent.json()["error"]
        preview = await client.post("/api/v1/gpu/preferences/test", json={}, headers=owner.headers)
        assert preview.json()["source"] == "catalog"


async def test_rent_refresh_and_destroy_an_owned_instance(
    market: Market, http: httpx.AsyncClient, owner: Account
) -> None:
    rented = await http.post(
        "/api/v1/gpu/instances/vastai/vastai:101", json={"duration_hours": 2}, headers=owner.headers
    )
    assert rented.status_code == 201, rented.text
    contract = rented.json()
    assert contract["provider"] == "vastai" and contract["status"] == "provisioning"
    assert contract["offer_id"] == "101" and contract["contract_id"].startswith("ctr_")
    assert contract["estimated_cost"] == pytest.approx(0.7) and contract["billing"] == "metered"
    created_at = datetime.fromisoformat(contract["created_at"])
    assert datetime.fromisoformat(contract["expires_at"]) - created_at == timedelta(hours=2)
    payload = market.vast.create_payloads["101"]
    assert payload["label"] == contract["contract_id"] and payload["cancel_unavail"] is True
    assert searches(market.vast) == 1  # one look at the offer before the create, not one per layer

    path = f"/api/v1/gpu/contracts/{contract['contract_id']}"
    refreshed = (await http.get(path, headers=owner.headers)).json()
    assert refreshed["status"] == "running" and refreshed["endpoint"] == "http://127.0.0.1:41234"

    intruder = await sign_up(http)
    assert (await http.get(path, headers=intruder.headers)).status_code == 404
    stolen = await http.delete(
        f"/api/v1/gpu/instances/vastai/{contract['instance_id']}", headers=intruder.headers
    )
    assert stolen.status_code == 404 and stolen.json()["code"] == "NOT_FOUND"
    assert market.vast.destroyed == []

    gone = await http.delete(f"/api/v1/gpu/instances/vastai/{contract['instance_id']}", headers=owner.headers)
    assert gone.status_code == 200
    assert gone.json() == {
        "message": "Instance destroyed successfully",
        "instance_id": contract["instance_id"],
        "contract_id": contract["contract_id"],
        "status": "destroyed",
    }
    assert market.vast.destroyed == [int(contract["instance_id"])]
    again = await http.delete(
        f"/api/v1/gpu/instances/vastai/{contract['contract_id']}", headers=owner.headers
    )
    assert again.status_code == 200 and len(market.vast.destroyed) == 1
    active = (await http.get("/api/v1/gpu/contracts", headers=owner.headers)).json()
    assert active["count"] == 0
    history = (await http.get("/api/v1/gpu/contracts?active=false", headers=owner.headers)).json()
    assert [c["status"] for c in history["contracts"]] == ["destroyed"]


async def test_a_refused_rent_is_recorded_as_failed_and_charges_nothing(
    market: Market, http: httpx.AsyncClient, owner: Account
) -> None:
    market.vast.fail_create_with_contract.add("104")
    refused = await http.post("/api/v1/gpu/instances/vastai/104", json={}, headers=owner.headers)
    assert refused.status_code == 409 and refused.json()["code"] == "CONFLICT"
    assert len(market.vast.destroyed) == 1  # the stopped instance vast.ai left behind was destroyed
    history = (await http.get("/api/v1/gpu/contracts?active=false", headers=owner.headers)).json()
    assert [(c["status"], c["instance_id"]) for c in history["contracts"]] == [("failed", None)]
    unknown = await http.post("/api/v1/gpu/instances/vastai/999", json={}, headers=owner.headers)
    assert unknown.status_code == 409
    assert (await http.get("/api/v1/gpu/contracts?active=false", headers=owner.headers)).json()["count"] == 1


async def test_bad_rent_input_is_refused(http: httpx.AsyncClient, owner: Account) -> None:
    prepaid = await http.post(
        "/api/v1/gpu/instances/ionet/12__1", json={"auto_renew": True}, headers=owner.headers
    )
    assert prepaid.status_code == 400 and "prepaid" in prepaid.json()["error"]
    for body in ({"duration_hours": 0}, {"duration_hours": -3}, {"duration_hours": 10**6}):
        answer = await http.post("/api/v1/gpu/instances/vastai/101", json=body, headers=owner.headers)
        assert answer.status_code == 400 and answer.json()["code"] == "VALIDATION_ERROR"
    nowhere = await http.post("/api/v1/gpu/instances/aws/1", json={}, headers=owner.headers)
    assert nowhere.status_code == 400
    anonymous = await http.post("/api/v1/gpu/instances/vastai/101", json={})
    assert anonymous.status_code == 401


async def test_ionet_rent_is_prepaid_and_destroyed_on_request(
    market: Market, http: httpx.AsyncClient, owner: Account
) -> None:
    rented = await http.post(
        "/api/v1/gpu/instances/ionet/12__2", json={"duration_hours": 3}, headers=owner.headers
    )
    assert rented.status_code == 201, rented.text
    contract = rented.json()
    assert contract["billing"] == "prepaid" and contract["estimated_cost"] == pytest.approx(1.8)
    assert contract["instance_id"] in market.ionet.deployments
    assert [path for _, path in market.ionet.requests if path.endswith("/hardware")] == [
        f"{API}/hardware"
    ]  # one look at the offer before the deploy
    for unavailable in ("31__4", "99__1"):  # sold out, unknown
        path = f"/api/v1/gpu/instances/ionet/{unavailable}"
        refused = await http.post(path, json={}, headers=owner.headers)
        assert refused.status_code == 409 and "no longer available" in refused.json()["error"]
    assert len(market.ionet.deployments) == 1
    listed = (await http.get("/api/v1/gpu/contracts", headers=owner.headers)).json()
    assert listed["contracts"][0]["status"] == "running" and listed["contracts"][0]["endpoint"]
    gone = await http.delete(f"/api/v1/gpu/instances/ionet/{contract['contract_id']}", headers=owner.headers)
    assert gone.status_code == 200 and contract["instance_id"] not in market.ionet.deployments


async def test_reserve_moves_past_refused_offers(
    market: Market, http: httpx.AsyncClient, owner: Account
) -> None:
    await http.post("/api/v1/gpu/preferences", json={"priority": "cost"}, headers=owner.headers)
    market.vast.refuse_create.add("104")  # the cheapest: listed, but someone else rents it first
    answer = await http.post(
        "/api/v1/gpu/instances/reserve",
        json={
            "count": 2,
            "filters": {"gpu_model": "RTX", "provider": "vastai"},
            "config": {"duration_hours": 1},
        },
        headers=owner.headers,
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["count"] == 2 and body["requested"] == 2
    assert sorted(r["provider"] for r in body["reserved"]) == ["vastai", "vastai"]
    assert {market.vast.instances[int(r["instance_id"])]["label"] for r in body["reserved"]} == {
        r["contract_id"] for r in body["reserved"]
    }
    assert [(e["offer_id"], e["code"]) for e in body["errors"]] == [("104", "CONFLICT")]


async def test_reserve_reports_a_shortfall(http: httpx.AsyncClient, owner: Account) -> None:
    answer = await http.post(
        "/api/v1/gpu/instances/reserve",
        json={"count": 3, "filters": {"gpu_model": "H100", "provider": "vastai"}},
        headers=owner.headers,
    )
    body = answer.json()
    assert body["count"] == 1 and body["requested"] == 3
    assert body["errors"][-1]["code"] == "INSUFFICIENT_CAPACITY"


async def test_batch_rents_per_provider(http: httpx.AsyncClient, owner: Account) -> None:
    answer = await http.post(
        "/api/v1/gpu/instances/batch",
        json={
            "vastai_count": 2,
            "ionet_count": 1,
            "filters": {"max_price": 1},
            "config": {"duration_hours": 4},
        },
        headers=owner.headers,
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert len(body["vastai_instances"]) == 2 and len(body["ionet_instances"]) == 1
    assert body["total_created"] == 3 and body["errors"] == []
    mine = (await http.get("/api/v1/gpu/contracts", headers=owner.headers)).json()
    assert {c["contract_id"] for c in mine["contracts"]} == {
        *body["vastai_instances"],
        *body["ionet_instances"],
    }


async def test_preferences_preview_ranks_live_offers(http: httpx.AsyncClient, owner: Account) -> None:
    answer = await http.post(
        "/api/v1/gpu/preferences/test",
        json={"overrides": {"priority": "performance", "min_vram": 24}},
        headers=owner.headers,
    )
    body = answer.json()
    assert body["source"] == "offers"
    assert body["selected_gpu"]["name"] == "B200" and body["selected_gpu"]["provider"] == "ionet"
    assert [a["name"] for a in body["alternatives"][:2]] == ["H100 SXM", "H100 SXM"]
    cost = await http.post(
        "/api/v1/gpu/preferences/test", json={"overrides": {"priority": "cost"}}, headers=owner.headers
    )
    assert cost.json()["selected_gpu"]["price_per_hour"] <= 0.3
    catalog = (await http.get("/api/v1/gpu/available?min_vram=80", headers=owner.headers)).json()
    prices = {g["name"]: g["avg_price_per_hour"] for g in catalog["gpus"]}
    assert prices["H100 SXM"] == pytest.approx((2.4 + 27.875342 / 8) / 2, abs=1e-4)  # vast.ai and io.net


async def test_expired_contracts_are_destroyed(
    market: Market, market_app: Starlette, http: httpx.AsyncClient, owner: Account
) -> None:
    contract = (
        await http.post("/api/v1/gpu/instances/vastai/101", json={"duration_hours": 1}, headers=owner.headers)
    ).json()
    renewing = (
        await http.post(
            "/api/v1/gpu/instances/vastai/102",
            json={"duration_hours": 1, "auto_renew": True},
            headers=owner.headers,
        )
    ).json()
    market_service = market_app.state.services.market
    past = datetime.now(UTC) - timedelta(minutes=1)
    for c in (contract, renewing):
        await market_service.contracts.update(c["contract_id"], expires_at=past)
    assert await market_service.expire_due() == 1
    assert market.vast.destroyed == [int(contract["instance_id"])]
    kept = (await http.get(f"/api/v1/gpu/contracts/{renewing['contract_id']}", headers=owner.headers)).json()
    assert kept["status"] == "running"
    assert datetime.fromisoformat(kept["expires_at"]) > datetime.now(UTC) + timedelta(minutes=58)


async def test_a_renewal_is_held_to_the_budget_of_the_app_that_rented(
    market: Market, market_app: Starlette, http: httpx.AsyncClient, owner: Account
) -> None:
    rented = (
        await http.post(
            "/api/v1/gpu/instances/vastai/102",
            json={"duration_hours": 1, "auto_renew": True},
            headers=owner.headers,
        )
    ).json()
    services = market_app.state.services
    person = Principal(owner.user_id, owner.email, False, "jwt")
    await services.costs.guardrails.set_limits(person, grant_scope("grant-1"), {"daily": Decimal("0.01")})
    # as if rented through the connected app whose grant is grant-1 (the OAuth tests make real ones)
    past = datetime.now(UTC) - timedelta(minutes=1)
    await services.market.contracts.update(rented["contract_id"], grant_id="grant-1", expires_at=past)
    assert await services.market.expire_due() == 1  # the app's budget refuses the next period
    assert market.vast.destroyed == [int(rented["instance_id"])]


@pytest.fixture
async def other_process(market: Market, market_app: Starlette) -> AsyncIterator[Services]:
    """The services of a second server process on the same database and Redis."""
    services = Services.create(market.settings)
    try:
        yield services
    finally:
        await services.close()


async def holds(services: Services, contract_id: str) -> list[tuple[str, Decimal]]:
    """The credit holds of a contract, oldest first: (status, amount captured or held)."""
    async with services.db.session() as session:
        rows = await session.scalars(
            select(LedgerHold).where(LedgerHold.reference == contract_id).order_by(LedgerHold.created_at)
        )
        return [(h.status, h.captured if h.status == "settled" else h.amount) for h in rows]


async def rent_due(
    http: httpx.AsyncClient, owner: Account, services: Services, offer: int, renew: bool
) -> str:
    """A contract on ``offer`` for one hour, due since a minute ago; its id."""
    rented = await http.post(
        f"/api/v1/gpu/instances/vastai/{offer}",
        json={"duration_hours": 1, "auto_renew": renew},
        headers=owner.headers,
    )
    contract_id: str = rented.json()["contract_id"]
    await services.market.contracts.update(contract_id, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    return contract_id


async def test_a_renewal_taken_by_another_process_is_not_charged_again(
    market_app: Starlette, other_process: Services, http: httpx.AsyncClient, owner: Account
) -> None:
    services: Services = market_app.state.services
    contract_id = await rent_due(http, owner, services, 102, renew=True)
    due = await services.market.contracts.owned(owner.user_id, contract_id)
    for process in (services, other_process):  # both read it due; the second renews after the first
        assert await Settlement(process.market.contracts, process.costs).renew(due)
    renewed = await services.market.contracts.owned(owner.user_id, contract_id)
    assert renewed.expires_at == due.expires_at + timedelta(hours=1)
    assert await holds(services, contract_id) == [("settled", Decimal("0.80")), ("open", Decimal("0.80"))]


async def test_racing_expiry_passes_renew_and_destroy_each_contract_once(
    market: Market, market_app: Starlette, http: httpx.AsyncClient, owner: Account
) -> None:
    services: Services = market_app.state.services
    ending = await rent_due(http, owner, services, 101, renew=False)
    renewing = await rent_due(http, owner, services, 102, renew=True)
    due = await services.market.contracts.owned(owner.user_id, renewing)
    # Two server processes on this database take turns through Redis (on the SQLite run too).
    shared = market.settings.model_copy(update={"redis_url": REDIS_URL or LOCAL_REDIS_URL})
    first, second = Services.create(shared), Services.create(shared)
    try:
        passes = await asyncio.gather(first.market.expire_due(), second.market.expire_due())
    finally:
        await first.close()
        await second.close()
    assert sorted(passes) == [0, 1]
    ended = await services.market.contracts.owned(owner.user_id, ending)
    assert ended.status == "destroyed" and market.vast.destroyed == [int(ended.instance_id or 0)]
    assert await holds(services, ending) == [("settled", Decimal("0.35"))]
    renewed = await services.market.contracts.owned(owner.user_id, renewing)
    assert renewed.status in ACTIVE and renewed.expires_at == due.expires_at + timedelta(hours=1)
    assert await holds(services, renewing) == [("settled", Decimal("0.80")), ("open", Decimal("0.80"))]


async def test_reserve_reports_progress_to_mcp_clients(market: Market) -> None:
    app = create_app(market.settings)
    async with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as plain:
            owner = await funded(plain)
        updates: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            updates.append((progress, total, message))

        async with mcp_client(url, owner.access_token, "streamable-legacy") as client:
            result = await client.call_tool(
                "reserve_gpus",
                {"count": 2, "filters": {"provider": "vastai", "gpu_model": "RTX 4090"}},
                progress_callback=on_progress,
            )
    assert result.is_error is not True, result.content
    assert result.structured_content is not None and result.structured_content["count"] == 2
    assert [u[0] for u in updates] == [1, 2]
    assert all(u[2] is not None and "RTX 4090" in u[2] for u in updates)
    assert json.loads(result.content[0].text)["requested"] == 2  # type: ignore[union-attr]
