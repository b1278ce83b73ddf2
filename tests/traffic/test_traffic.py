"""Traffic end to end: three local workers behind the proxy, strategies, ejection, and the proxy's limits."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.registry import Surface, ToolContext
from aiserve_mcp.tools.runner import call_tool
from tests.conftest import Account, app_client, funded, serve, sign_up
from tests.fakes.vastai_server import API_KEY, VastAiState, make_offers, vastai_app


@dataclass
class Pool:
    app: Starlette
    client: httpx.AsyncClient
    owner: Account
    pids: dict[str, int]  # contract id -> worker pid


def pid_of(instance_id: str) -> int:
    return int(instance_id.rsplit("-", 1)[1])


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    fast = settings.model_copy(
        update={"local_cpu_slots": 3, "proxy_timeout_s": 1.0, "lb_eject_after": 3, "lb_eject_for_s": 1.0}
    )
    async with app_client(fast) as (app, client):
        owner = await sign_up(client)
        answer = await client.post(
            "/api/v1/gpu/instances/reserve",
            json={"count": 3, "filters": {"provider": "local"}},
            headers=owner.headers,
        )
        reserved = answer.json()["reserved"]
        assert len(reserved) == 3, answer.text
        yield Pool(app, client, owner, {r["contract_id"]: pid_of(r["instance_id"]) for r in reserved})


async def proxied_pid(pool: Pool, **fields: object) -> int:
    answer = await pool.client.post(
        "/api/v1/gpu/proxy", json={"method": "GET", "path": "/health", **fields}, headers=pool.owner.headers
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["pid"])


async def set_strategy(pool: Pool, strategy: str) -> None:
    answer = await pool.client.put(
        "/api/v1/loadbalancer/strategy", json={"strategy": strategy}, headers=pool.owner.headers
    )
    assert answer.json() == {
        "strategy": strategy,
        "pool": "default",
        "message": "Load balancing strategy updated",
    }


async def test_round_robin_rotates_over_the_pool_and_the_worker_token_is_added(pool: Pool) -> None:
    assert (await pool.client.get("/api/v1/loadbalancer/strategy", headers=pool.owner.headers)).json() == {
        "strategy": "round_robin",
        "pool": "default",
    }
    seen = [await proxied_pid(pool) for _ in range(9)]
    assert set(seen) == set(pool.pids.values())
    assert seen[:3] * 3 == seen  # strict rotation
    loads = (await pool.client.get("/api/v1/loadbalancer/loads", headers=pool.owner.headers)).json()
    assert loads["count"] == 3 and loads["strategy"] == "round_robin"
    for contract_id, load in loads["loads"].items():
        assert contract_id in pool.pids
        assert load["connections"] == 0 and load["requests"] == 3 and load["healthy"] is True
        assert load["response_time_ms"] is not None and load["response_time_ms"] > 0
    one = next(iter(pool.pids))
    single = await pool.client.get(f"/api/v1/loadbalancer/load?instance_id={one}", headers=pool.owner.headers)
    assert single.json()["contract_id"] == one


async def test_a_target_instance_gets_every_request(pool: Pool) -> None:
    contract_id, pid = next(iter(pool.pids.items()))
    assert {await proxied_pid(pool, target=contract_id) for _ in range(4)} == {pid}


async def test_least_response_time_moves_traffic_away_from_a_slow_worker(pool: Pool) -> None:
    await set_strategy(pool, "least_response_time")
    slow = next(iter(pool.pids.values()))
    stop = asyncio.Event()

    async def starve() -> None:  # the worker runs 20 ms in every 100 ms: a much slower machine
        while not stop.is_set():
            os.kill(slow, signal.SIGSTOP)
            await asyncio.sleep(0.08)
            os.kill(slow, signal.SIGCONT)
            await asyncio.sleep(0.02)

    starver = asyncio.create_task(starve())
    try:
        picks = []
        for _ in range(20):
            picks += await asyncio.gather(*(proxied_pid(pool) for _ in range(3)))
    finally:
        stop.set()
        await starver
        os.kill(slow, signal.SIGCONT)
    late = Counter(picks[-30:])
    assert late[slow] <= 3, (late, slow)


async def test_a_failing_worker_is_ejected_and_probed_back(pool: Pool) -> None:
    stuck = next(iter(pool.pids.values()))
    stuck_contract = next(c for c, p in pool.pids.items() if p == stuck)
    os.kill(stuck, signal.SIGSTOP)
    try:
        # GET is idempotent: a timed-out attempt is retried on another worker, so every request succeeds.
        seen = [await proxied_pid(pool) for _ in range(9)]
        assert stuck not in seen
        loads = (await pool.client.get("/api/v1/loadbalancer/loads", headers=pool.owner.headers)).json()
        assert loads["loads"][stuck_contract]["healthy"] is False
        assert loads["loads"][stuck_contract]["failures"] == 3
        assert loads["loads"][stuck_contract]["connections"] == 0
        posted = await pool.client.post(
            "/api/v1/gpu/proxy",
            json={"method": "POST", "path": "/health", "target": stuck_contract},
            headers=pool.owner.headers,
        )
        assert posted.status_code == 503 and "Retry-After" in posted.headers
    finally:
        os.kill(stuck, signal.SIGCONT)
    await asyncio.sleep(1.1)  # the ejection ends; the next pick probes the worker
    seen = [await proxied_pid(pool) for _ in range(6)]
    assert stuck in seen
    loads = (await pool.client.get("/api/v1/loadbalancer/loads", headers=pool.owner.headers)).json()
    assert loads["loads"][stuck_contract]["healthy"] is True


async def test_the_proxy_reaches_only_the_callers_running_instances(pool: Pool) -> None:
    intruder = await sign_up(pool.client)
    contract_id = next(iter(pool.pids))
    for target in (contract_id, None, "default", "nope"):
        body = {"method": "GET", "path": "/health"} | ({"target": target} if target else {})
        answer = await pool.client.post("/api/v1/gpu/proxy", json=body, headers=intruder.headers)
        assert answer.status_code == 404 and answer.json()["code"] == "NOT_FOUND"
    for path in ("//169.254.169.254/latest", "http://169.254.169.254/", "health", "/a b"):
        answer = await pool.client.post(
            "/api/v1/gpu/proxy", json={"method": "GET", "path": path}, headers=pool.owner.headers
        )
        assert answer.status_code == 400, path
    bad = await pool.client.put(
        "/api/v1/loadbalancer/strategy", json={"strategy": "fastest"}, headers=pool.owner.headers
    )
    assert bad.status_code == 400


async def test_mcp_callers_get_the_answer_as_json(pool: Pool) -> None:
    services = pool.app.state.services
    principal = await services.accounts.authenticate(pool.owner.access_token)
    result = await call_tool(
        REGISTRY.get("proxy_request"),
        {"method": "GET", "path": "/health"},
        ToolContext(services, principal, Surface.MCP),
    )
    data = result.model_dump()
    assert data["status_code"] == 200 and data["body"]["status"] == "ok"
    assert data["contract_id"] in pool.pids


async def test_instances_on_private_addresses_are_refused(settings: Settings) -> None:
    vast = VastAiState(offers=make_offers(5, seed=3), shows_until_running=0)
    for offer in vast.offers:
        offer.update(verified=True, rentable=True, rented=False, external=False)
    async with serve(vastai_app(vast)) as vast_url:
        configured = settings.model_copy(
            update={"vastai_url": vast_url, "vastai_api_key": SecretStr(API_KEY), "billing_sandbox": True}
        )
        async with app_client(configured) as (_, client):
            owner = await funded(client)
            offer_id = vast.offers[0]["id"]
            rented = await client.post(
                f"/api/v1/gpu/instances/vastai/{offer_id}", json={}, headers=owner.headers
            )
            contract = rented.json()
            refreshed = await client.get(
                f"/api/v1/gpu/contracts/{contract['contract_id']}", headers=owner.headers
            )
            assert refreshed.json()["endpoint"].startswith("http://127.0.0.1:")  # as the provider says
            answer = await client.post(
                "/api/v1/gpu/proxy",
                json={"method": "GET", "path": "/", "target": contract["contract_id"]},
                headers=owner.headers,
            )
            assert answer.status_code == 403 and "private" in answer.json()["error"]


async def test_a_head_answer_is_relayed_without_a_body(settings: Settings) -> None:
    """Over real HTTP: the upstream's Content-Length describes a body a HEAD answer does not carry, so the
    relay must not repeat it."""
    app = create_app(settings.model_copy(update={"local_cpu_slots": 1}))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        owner = await sign_up(client)
        reserved = await client.post(
            "/api/v1/gpu/instances/reserve",
            json={"count": 1, "filters": {"provider": "local"}},
            headers=owner.headers,
        )
        assert reserved.status_code == 201, reserved.text
        for method in ("HEAD", "GET"):
            answer = await client.post(
                "/api/v1/gpu/proxy", json={"method": method, "path": "/health"}, headers=owner.headers
            )
            assert answer.status_code == 200, answer.text
            assert (answer.content == b"") == (method == "HEAD")
