"""Outages and bugs under a running server: its own Redis and PostgreSQL are killed mid-traffic and
started again. Nothing answers a plain-text 500; money fails closed with 503 and ``Retry-After``; reads
that need no Redis keep working; the server recovers without a restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from tests.conftest import _asyncpg_dsn, api_key, serve, sign_up
from tests.fault_services import (
    PrivatePostgres,
    PrivateRedis,
    private_postgres_fixture,  # noqa: F401
    private_redis_fixture,  # noqa: F401
)

MCP_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
MCP_HEADERS = {"Accept": "application/json"}
DATABASE_TIMEOUT_S = 2.0
LEAKS = {"SELECT", "FROM", "such", "exist", "sqlite3.OperationalError", "asyncpg"}  # words of a leaked error


@dataclass
class Traffic:
    """Requests sent in a loop while the test breaks things: every answer's status, code and time."""

    answers: list[tuple[int, str | None, float]] = field(default_factory=list)

    def statuses(self) -> set[int]:
        return {status for status, _, _ in self.answers}


@asynccontextmanager
async def traffic(send: Callable[[], Any]) -> AsyncIterator[Traffic]:
    seen = Traffic()
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            response: httpx.Response = await send()
            code = response.json().get("code") if response.status_code >= 400 else None
            seen.answers.append((response.status_code, code, time.monotonic() - started))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    try:
        yield seen
    finally:
        stop.set()
        await task


def assert_outage(response: httpx.Response, store: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "SERVICE_UNAVAILABLE" and store in body["error"], body
    assert int(response.headers["Retry-After"]) > 0


async def until(check: Callable[[], Any], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the server did not recover"
        await asyncio.sleep(0.1)


async def test_redis_outage_keeps_reads_and_fails_money_closed(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    tuned = settings.model_copy(update={"redis_url": private_redis.url, "rate_limit_window_s": 3600})
    async with serve(create_app(tuned)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        owner = await sign_up(http)
        spend = "/api/v1/guardrails/spending/record"
        first = await http.post(spend, json={"amount": 1, "idempotency_key": "before"}, headers=owner.headers)
        assert first.status_code == 200, first.text

        async with traffic(lambda: http.get("/api/v1/user/me", headers=owner.headers)) as reads:
            await asyncio.to_thread(private_redis.kill)
            me = await http.get("/api/v1/user/me", headers=owner.headers)
            assert me.status_code == 200 and me.headers["X-RateLimit-Limit"] == "100"
            catalog = await http.get("/api/v1/gpu/examples", headers=owner.headers)
            assert catalog.status_code == 200
            listed = await http.post(
                "/api/v1/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={**owner.headers, **MCP_HEADERS},
            )
            assert listed.status_code == 200 and listed.json()["result"]["tools"]

            refused = await http.post(
                spend, json={"amount": 2, "idempotency_key": "during"}, headers=owner.headers
            )
            assert_outage(refused, "Redis")
            health = await http.get("/health")
            assert health.status_code == 503
            assert "rate limits are counted per server process" in health.json()["checks"]["redis"]["impact"]
            metrics = (await http.get("/metrics")).text
            assert "aiserve_rate_limit_fallbacks_total" in metrics
            await asyncio.sleep(0.3)
        assert reads.statuses() == {200}, reads.answers

        await asyncio.to_thread(private_redis.start)
        await until(lambda: _status_is(http, "/health", 200))
        # The refused spend was never recorded: replayed now it counts once, and a second replay is a
        # duplicate. (This private Redis keeps nothing on disk, so the spend from before the crash is gone
        # with it; the README tells operators to give Redis persistence when it holds spending windows.)
        replayed = [
            await http.post(spend, json={"amount": 2, "idempotency_key": "during"}, headers=owner.headers)
            for _ in range(2)
        ]
        assert [r.status_code for r in replayed] == [200, 200]
        assert [r.json()["duplicate"] for r in replayed] == [False, True]
        totals = (await http.get("/api/v1/guardrails/spending", headers=owner.headers)).json()
        assert {w["window"]: w["spent"] for w in totals["windows"]}["hourly"] == 2.0


async def _status_is(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status


async def test_postgres_outage_answers_503_quickly_and_recovers(
    settings: Settings, private_postgres: PrivatePostgres
) -> None:
    tuned = settings.model_copy(
        update={
            "database_url": private_postgres.url,
            "redis_url": None,
            "read_cache_ttl_s": 0,  # every request asks the database who its caller is
            "database_timeout_s": DATABASE_TIMEOUT_S,
        }
    )
    async with serve(create_app(tuned)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        owner = await sign_up(http)
        key = await api_key(http, owner)
        spend = "/api/v1/guardrails/spending/record"

        async with traffic(lambda: http.get("/api/v1/user/me", headers=owner.headers)) as reads:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(private_postgres.kill)
            assert_outage(await http.get("/api/v1/user/me", headers=owner.headers), "database")
            assert_outage(await http.post(spend, json={"amount": 1}, headers=owner.headers), "database")
            mcp = {**MCP_CALL, "params": {"name": "whoami", "arguments": {}}}
            assert_outage(
                await http.post("/api/v1/mcp", json=mcp, headers={"X-API-Key": key, **MCP_HEADERS}),
                "database",
            )
            health = await http.get("/health")
            assert health.status_code == 503 and health.json()["checks"]["database"]["healthy"] is False
            ws_url = "ws" + url.removeprefix("http") + "/ws"
            async with connect(ws_url, additional_headers={"X-API-Key": key}, proxy=None) as ws:
                said = await asyncio.wait_for(ws.recv(), 10)
                assert '"SERVICE_UNAVAILABLE"' in str(said)
                await asyncio.wait_for(ws.wait_closed(), 10)
                assert ws.close_code == 1013
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_postgres.start)
            await until(lambda: _status_is(http, "/api/v1/user/me", 401))  # public now: no credentials sent
            await until(lambda: _me_is_ok(http, owner.headers))
        # Every answer during the outage was the spec's 503, in less than the pool timeout.
        assert reads.statuses() <= {200, 503}, reads.answers
        assert {code for status, code, _ in reads.answers if status == 503} == {"SERVICE_UNAVAILABLE"}
        assert 503 in reads.statuses() and reads.answers[-1][0] == 200
        assert max(took for _, _, took in reads.answers) < DATABASE_TIMEOUT_S + 1.5, reads.answers
        recorded = await http.post(spend, json={"amount": 1}, headers=owner.headers)
        assert recorded.status_code == 200, recorded.text


async def _me_is_ok(http: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    return (await http.get("/api/v1/user/me", headers=headers)).status_code == 200


async def test_a_bug_answers_the_spec_500_on_every_surface_and_the_connection_goes_on(
    settings: Settings,
) -> None:
    """A broken schema (a table dropped under the running server) stands in for a bug: every surface
    answers ``INTERNAL_ERROR`` without internals, and the same connection serves the next request."""
    uncached = settings.model_copy(update={"read_cache_ttl_s": 0})  # every request checks its credential
    async with serve(create_app(uncached)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        owner = await sign_up(http)
        key = await api_key(http, owner)
        await _drop_table(settings, "gpu_preferences")

        broken = await http.get("/api/v1/gpu/preferences", headers=owner.headers)
        assert broken.status_code == 500 and broken.headers["content-type"] == "application/json"
        assert broken.json() == {
            "error": "internal error; the failure was logged on the server",
            "code": "INTERNAL_ERROR",
        }
        assert (await http.get("/api/v1/user/me", headers=owner.headers)).status_code == 200

        mcp = {**MCP_CALL, "params": {"name": "get_gpu_preferences", "arguments": {}}}
        called = await http.post("/api/v1/mcp", json=mcp, headers={"X-API-Key": key, **MCP_HEADERS})
        result = called.json()["result"]
        assert result["isError"] is True and "INTERNAL_ERROR" in result["content"][0]["text"]
        assert not LEAKS & set(called.text.split())  # no SQL or driver text

        message = {
            "kind": "message",
            "role": "user",
            "messageId": str(uuid.uuid4()),
            "parts": [{"kind": "data", "data": {"tool": "get_gpu_preferences", "arguments": {}}}],
        }
        sent = await http.post(
            "/api/v1/a2a",
            json={"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": message}},
            headers={"X-API-Key": key},
        )
        task = sent.json()["result"]
        assert task["status"]["state"] == "failed" and "INTERNAL_ERROR" in sent.text
        assert not LEAKS & set(sent.text.split())

        await _drop_table(settings, "a2a_tasks")  # now the SDK's own task store step fails
        sent = await http.post(
            "/api/v1/a2a",
            json={"jsonrpc": "2.0", "id": 2, "method": "message/send", "params": {"message": message}},
            headers={"X-API-Key": key},
        )
        error = sent.json()["error"]
        assert error["code"] == -32603 and error["data"]["code"] == "INTERNAL_ERROR", sent.text
        assert not LEAKS & set(sent.text.split())

        await _drop_table(settings, "api_keys")  # now even checking an API key fails
        ws_url = "ws" + url.removeprefix("http") + "/ws"
        async with connect(ws_url, additional_headers={"X-API-Key": key}, proxy=None) as ws:
            said = await asyncio.wait_for(ws.recv(), 10)
            assert '"INTERNAL_ERROR"' in str(said) and "api_keys" not in str(said)
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1011
        assert (await http.get("/api/v1/user/me", headers=owner.headers)).status_code == 200


async def _drop_table(settings: Settings, table: str) -> None:
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        import aiosqlite

        async with aiosqlite.connect(url.split("///", 1)[1]) as db:
            await db.execute("PRAGMA foreign_keys=OFF")
            await db.execute(f"DROP TABLE {table}")
            await db.commit()
        return
    connection = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await connection.execute(f"DROP TABLE {table} CASCADE")
    finally:
        await connection.close()


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
