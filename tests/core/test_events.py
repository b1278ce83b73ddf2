"""Live events: the bus (memory and Redis), and ``GET /ws`` over real servers: credentials, messages, the
events that renting, destroying, expiring and spending cause, metrics snapshots, and events caused on
another server process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect

from aiserve_mcp.app import create_app
from aiserve_mcp.core.events import QUEUE_SIZE, Event, MemoryEventBus, RedisEventBus, Subscription
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols import websocket
from tests.conftest import LOCAL_REDIS_URL, Account, free_port, funded, serve, sign_up

TIMEOUT_S = 15.0
STREAMS_HINT = "streams: instances, spending, models, metrics, approvals"

# -- the bus ----------------------------------------------------------------------------------------


async def drain(subscription: Subscription, wait_s: float = 0.05) -> list[Event]:
    """Every event waiting for ``subscription`` (and any arriving within ``wait_s`` of the last)."""
    events = []
    while True:
        try:
            events.append(await asyncio.wait_for(subscription.next(), wait_s))
        except TimeoutError:
            return events


async def test_memory_bus_delivers_by_user_and_stream() -> None:
    bus = MemoryEventBus()
    alice = bus.subscribe("alice", frozenset({"instances", "metrics"}))
    bob = bus.subscribe("bob", frozenset({"instances"}))
    alices = Event("instances", "instance.status", {"n": 1}, "alice")
    bobs = Event("instances", "instance.status", {"n": 2}, "bob")
    snapshot = Event("metrics", "metrics.snapshot", {"pid": 1})
    for event in (alices, Event("spending", "spend.recorded", {}, "alice"), bobs, snapshot):
        await bus.publish(event)
    assert await drain(alice) == [alices, snapshot]
    assert await drain(bob) == [bobs]
    bus.unsubscribe(bob)
    await bus.publish(bobs)
    assert await drain(bob) == []
    assert bus.subscribers == 1


async def test_a_slow_subscriber_loses_its_oldest_events() -> None:
    bus = MemoryEventBus()
    slow = bus.subscribe("u", frozenset({"spending"}))
    for n in range(QUEUE_SIZE + 10):
        await bus.publish(Event("spending", "spend.recorded", {"n": n}, "u"))
    assert [e.data["n"] for e in await drain(slow)] == list(range(10, QUEUE_SIZE + 10))


async def test_two_redis_buses_deliver_each_others_events_exactly_once() -> None:
    channel = f"aiserve-test:{uuid.uuid4().hex[:8]}:events"
    first_redis, second_redis = Redis.from_url(LOCAL_REDIS_URL), Redis.from_url(LOCAL_REDIS_URL)
    first, second = RedisEventBus(first_redis, channel), RedisEventBus(second_redis, channel)
    try:
        on_first = first.subscribe("u", frozenset({"instances"}))
        on_second = second.subscribe("u", frozenset({"instances"}))
        await asyncio.wait_for(asyncio.gather(first.ready(), second.ready()), TIMEOUT_S)
        from_first = Event("instances", "instance.status", {"from": "first"}, "u")
        from_second = Event("instances", "instance.status", {"from": "second"}, "u")
        await first.publish(from_first)
        await second.publish(from_second)
        await first.publish(Event("instances", "instance.status", {"from": "first"}, "someone else"))
        for subscription in (on_first, on_second):
            assert await drain(subscription, 0.5) == [from_first, from_second]
    finally:
        await first.aclose()
        await second.aclose()
        await first_redis.aclose()
        await second_redis.aclose()


# -- GET /ws ----------------------------------------------------------------------------------------


@dataclass
class Live:
    url: str
    app: Starlette
    http: httpx.AsyncClient


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    """A real server on a loopback port: sandbox payments, two local CPU workers at 0.5 USD per hour and
    a metrics snapshot every 0.2 s."""
    tuned = settings.model_copy(
        update={
            "billing_sandbox": True,
            "local_cpu_slots": 2,
            "local_price_per_hour": Decimal("0.5"),
            "events_metrics_interval_s": 0.2,
        }
    )
    app = create_app(tuned)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
        yield Live(url, app, http)


@asynccontextmanager
async def socket(
    base_url: str, token: str | None = None, headers: dict[str, str] | None = None, query: str = ""
) -> AsyncIterator[ClientConnection]:
    if token is not None:
        headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    url = "ws" + base_url.removeprefix("http") + "/ws" + query
    async with connect(url, additional_headers=headers, proxy=None, open_timeout=TIMEOUT_S) as ws:
        yield ws


async def receive(ws: ClientConnection) -> str:
    raw = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    assert isinstance(raw, str)
    return raw


async def receive_json(ws: ClientConnection) -> dict[str, Any]:
    body = json.loads(await receive(ws))
    assert isinstance(body, dict)
    return body


async def send_json(ws: ClientConnection, body: dict[str, Any]) -> None:
    await ws.send(json.dumps(body))


async def subscribe(ws: ClientConnection, stream: str, as_json: bool = False) -> None:
    if as_json:
        await send_json(ws, {"type": "subscribe", "stream": stream})
    else:
        await ws.send(f"subscribe:{stream}")
    assert await receive_json(ws) == {"type": "subscribed", "stream": stream}


async def closed_with(ws: ClientConnection) -> int | None:
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT_S)
    return ws.close_code


async def assert_quiet(ws: ClientConnection) -> None:
    """Nothing was sent to ``ws`` before the answer to a ping sent now."""
    await ws.send("ping")
    assert await receive(ws) == "pong"


async def test_ping_pong_as_text_and_as_json(live: Live) -> None:
    owner = await sign_up(live.http)
    async with socket(live.url, owner.access_token) as ws:
        await ws.send("ping")
        assert await receive(ws) == "pong"
        await send_json(ws, {"type": "ping"})
        assert await receive_json(ws) == {"type": "pong"}


async def test_every_form_of_credentials_is_accepted(live: Live) -> None:
    owner = await sign_up(live.http)
    created = await live.http.post("/api/v1/auth/apikey", json={"name": "ws"}, headers=owner.headers)
    key = created.json()["api_key"]
    for token, headers, query in (
        (key, None, ""),
        (None, {"X-API-Key": key}, ""),
        (None, None, f"?token={owner.access_token}"),
    ):
        async with socket(live.url, token, headers, query) as ws:
            await assert_quiet(ws)
    async with socket(live.url) as ws:
        await send_json(ws, {"type": "auth", "token": key})
        assert await receive_json(ws) == {"type": "authenticated"}
        await send_json(ws, {"type": "auth", "token": key})
        assert (await receive_json(ws))["code"] == "VALIDATION_ERROR"
        await assert_quiet(ws)


async def test_bad_or_missing_credentials_close_with_4401(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    for token, query in (("not-a-token", ""), (None, "?token=ak_live_nope")):
        async with socket(live.url, token, query=query) as ws:
            error = await receive_json(ws)
            assert (error["type"], error["code"]) == ("error", "AUTH_INVALID")
            assert await closed_with(ws) == 4401
    async with socket(live.url, headers={"Authorization": "Basic abc"}) as ws:
        assert (await receive_json(ws))["code"] == "AUTH_INVALID"
        assert await closed_with(ws) == 4401
    async with socket(live.url) as ws:
        await ws.send("ping")  # not an auth message
        error = await receive_json(ws)
        assert (error["type"], error["code"]) == ("error", "AUTH_REQUIRED")
        assert await closed_with(ws) == 4401
    monkeypatch.setattr(websocket, "AUTH_TIMEOUT_S", 0.2)
    async with socket(live.url) as ws:  # says nothing
        assert (await receive_json(ws))["code"] == "AUTH_REQUIRED"
        assert await closed_with(ws) == 4401


async def test_unknown_streams_and_messages_are_errors_that_keep_the_connection(live: Live) -> None:
    owner = await sign_up(live.http)
    async with socket(live.url, owner.access_token) as ws:
        for message in ("subscribe:gossip", '{"type": "subscribe", "stream": 7}', "hello", "{}", "[1]"):
            await ws.send(message)
            error = await receive_json(ws)
            assert (error["type"], error["code"]) == ("error", "VALIDATION_ERROR"), message
            assert error["error"].endswith(STREAMS_HINT)
        await ws.send(b"ping")
        assert (await receive_json(ws))["code"] == "VALIDATION_ERROR"
        await assert_quiet(ws)
        await ws.send("x" * (websocket.MAX_MESSAGE_BYTES + 1))
        assert (await receive_json(ws))["code"] == "PAYLOAD_TOO_LARGE"
        assert await closed_with(ws) == 1009


async def test_a_stream_needs_its_scope(live: Live) -> None:
    owner = await sign_up(live.http)
    created = await live.http.post(
        "/api/v1/auth/apikey", json={"name": "narrow", "scopes": ["account:read"]}, headers=owner.headers
    )
    async with socket(live.url, created.json()["api_key"]) as ws:
        await ws.send("subscribe:instances")
        error = await receive_json(ws)
        assert (error["code"], error["details"]) == ("FORBIDDEN", {"required_scope": "gpu:read"})
        await subscribe(ws, "metrics")


async def rent(live: Live, owner: Account, offer: str, hours: int = 1) -> httpx.Response:
    return await live.http.post(
        f"/api/v1/gpu/instances/local/{offer}", json={"duration_hours": hours}, headers=owner.headers
    )


async def test_rent_destroy_and_expiry_are_told_to_the_owner_only(live: Live) -> None:
    owner, other = await funded(live.http), await funded(live.http)
    async with socket(live.url, owner.access_token) as ws, socket(live.url, other.access_token) as theirs:
        await subscribe(ws, "instances")
        await subscribe(theirs, "instances", as_json=True)
        rented = await rent(live, owner, "cpu0")
        assert rented.status_code == 201, rented.text
        contract = rented.json()
        provisioning, running = await receive_json(ws), await receive_json(ws)
        assert (provisioning["type"], provisioning["stream"], provisioning["event"]) == (
            "event",
            "instances",
            "instance.status",
        )
        expected = {"contract_id": contract["contract_id"], "provider": "local"}
        assert provisioning["data"] == {
            **expected,
            "instance_id": None,
            "status": "provisioning",
            "previous_status": None,
            "expires_at": provisioning["data"]["expires_at"],
        }
        assert running["data"] == {
            **expected,
            "instance_id": contract["instance_id"],
            "status": "running",
            "previous_status": "provisioning",
            "endpoint": contract["endpoint"],
            "expires_at": provisioning["data"]["expires_at"],
        }
        destroyed = await live.http.delete(
            f"/api/v1/gpu/instances/local/{contract['contract_id']}", headers=owner.headers
        )
        assert destroyed.status_code == 200, destroyed.text
        event = (await receive_json(ws))["data"]
        assert (event["contract_id"], event["status"], event["previous_status"]) == (
            contract["contract_id"],
            "destroyed",
            "running",
        )
        assert "endpoint" not in event

        second = (await rent(live, owner, "cpu1")).json()
        assert [(await receive_json(ws))["data"]["status"] for _ in range(2)] == ["provisioning", "running"]
        market = live.app.state.services.market
        past = datetime.now(UTC) - timedelta(minutes=1)
        await market.contracts.update(second["contract_id"], expires_at=past)
        moved = (await receive_json(ws))["data"]
        assert (moved["status"], moved["previous_status"]) == ("running", "running")
        assert datetime.fromisoformat(moved["expires_at"]) == past
        assert await market.expire_due() == 1
        expired = (await receive_json(ws))["data"]
        assert (expired["contract_id"], expired["status"], expired["message"]) == (
            second["contract_id"],
            "destroyed",
            "the rented hours are over",
        )
        await assert_quiet(theirs)


async def test_spends_and_refusals_are_told_on_the_spending_stream(live: Live) -> None:
    owner = await funded(live.http)
    async with socket(live.url, owner.access_token) as ws:
        await subscribe(ws, "spending", as_json=True)
        contract = (await rent(live, owner, "cpu0", hours=2)).json()
        recorded = await receive_json(ws)
        assert (recorded["stream"], recorded["event"]) == ("spending", "spend.recorded")
        data = recorded["data"]
        assert (data["amount"], data["reference"], data["api_key_id"]) == (1.0, contract["contract_id"], None)
        hourly = next(w for w in data["windows"] if w["window"] == "hourly")
        assert (hourly["spent"], hourly["limit"], hourly["scope"]) == (1.0, 100.0, "user")

        lowered = await live.http.put(
            "/api/v1/guardrails/limits", json={"limits": {"hourly": 1.2}}, headers=owner.headers
        )
        assert lowered.status_code == 200, lowered.text
        refused = await rent(live, owner, "cpu1")
        assert refused.status_code == 402, refused.text
        event = await receive_json(ws)
        assert (event["event"], event["data"]["amount"]) == ("spend.refused", 0.5)
        assert event["data"]["reference"].startswith("ctr_")  # the contract that was never made
        violations = [(v["window"], v["spent"], v["limit"]) for v in event["data"]["violations"]]
        assert violations == [("hourly", 1.5, 1.2)]
        await assert_quiet(ws)


async def test_metrics_snapshots_come_every_interval_until_unsubscribed(live: Live) -> None:
    owner = await sign_up(live.http)
    async with socket(live.url, owner.access_token) as ws:
        await subscribe(ws, "metrics")
        snapshot = await receive_json(ws)
        assert (snapshot["stream"], snapshot["event"]) == ("metrics", "metrics.snapshot")
        assert snapshot["data"]["pid"] == os.getpid()
        assert snapshot["data"]["requests_total"] >= 2  # signing up and logging in
        assert set(snapshot["data"]) == {
            "pid",
            "requests_total",
            "requests_per_second",
            "active_connections",
            "gpu_instances_active",
            "models_loaded",
            "uptime_s",
        }
        await ws.send("unsubscribe:metrics")
        while (answer := await receive_json(ws))["type"] == "event":
            pass
        assert answer == {"type": "unsubscribed", "stream": "metrics"}
        await asyncio.sleep(0.5)
        await assert_quiet(ws)


async def test_a_revoked_key_is_disconnected(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket, "RECHECK_INTERVAL_S", 0.2)
    owner = await sign_up(live.http)
    created = (await live.http.post("/api/v1/auth/apikey", json={"name": "k"}, headers=owner.headers)).json()
    async with socket(live.url, created["api_key"]) as ws:
        await assert_quiet(ws)
        revoked = await live.http.delete(f"/api/v1/auth/apikey/{created['id']}", headers=owner.headers)
        assert revoked.status_code == 200, revoked.text
        assert (await receive_json(ws))["code"] == "AUTH_INVALID"
        assert await closed_with(ws) == 4401


# -- across server processes ------------------------------------------------------------------------


async def until_healthy(http: httpx.AsyncClient, url: str, process: asyncio.subprocess.Process) -> None:
    for _ in range(600):
        assert process.returncode is None, "the second server exited"
        try:
            if (await http.get(f"{url}/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not become healthy")


async def test_an_event_caused_on_another_server_process_reaches_this_one(
    settings: Settings, server_env: dict[str, str], tmp_path: Path
) -> None:
    """Process A (here) serves the WebSocket; process B (``aiserve serve``, another OS process on the same
    database and Redis) takes the REST call; the event it publishes reaches A's subscriber, once."""
    shared = settings.model_copy(update={"redis_url": LOCAL_REDIS_URL, "events_metrics_interval_s": 0.2})
    env = {**server_env, "AISERVE_REDIS_URL": LOCAL_REDIS_URL, "AISERVE_EVENTS_METRICS_INTERVAL_S": "0.2"}
    port = free_port()
    url_b = f"http://127.0.0.1:{port}"
    async with serve(create_app(shared)) as url_a, httpx.AsyncClient(timeout=30, trust_env=False) as http:
        with (tmp_path / "server-b.log").open("wb") as log:
            process_b = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aiserve_mcp",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                env=env,
                stdout=log,
                stderr=log,
            )
        try:
            await until_healthy(http, url_b, process_b)
            async with httpx.AsyncClient(base_url=url_a, timeout=30, trust_env=False) as on_a:
                owner = await sign_up(on_a)
            async with socket(url_a, owner.access_token) as ws:
                await subscribe(ws, "spending")
                await subscribe(ws, "metrics")
                recorded = await http.post(
                    f"{url_b}/api/v1/guardrails/spending/record",
                    json={"amount": 2.5, "idempotency_key": "on-b"},
                    headers=owner.headers,
                )
                assert recorded.status_code == 200, recorded.text
                spends: list[dict[str, Any]] = []
                pids: set[int] = set()
                while not spends or not {os.getpid(), process_b.pid} <= pids:
                    event = await receive_json(ws)
                    if event["event"] == "metrics.snapshot":
                        pids.add(event["data"]["pid"])
                    else:
                        spends.append(event)
                await ws.send("unsubscribe:metrics")
                while (answer := await receive_json(ws))["type"] == "event":
                    if answer["event"] != "metrics.snapshot":
                        spends.append(answer)
                await asyncio.sleep(0.3)
                await assert_quiet(ws)
            assert [(e["event"], e["data"]["amount"], e["data"]["reference"]) for e in spends] == [
                ("spend.recorded", 2.5, "on-b")
            ]
        finally:
            process_b.terminate()
            await asyncio.wait_for(process_b.wait(), 30)
