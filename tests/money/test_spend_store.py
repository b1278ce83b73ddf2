"""The spending guardrails' store, for SQLite, PostgreSQL and Redis alike: rolling windows, resets,
idempotency, and an atomic check-and-record that 1,000 concurrent spends cannot overrun."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.money.spend_store.base import SpendStore, WindowLimit, WindowTotal
from aiserve_mcp.money.spend_store.redis_store import RedisSpendStore
from aiserve_mcp.money.spend_store.sql import SqlSpendStore
from aiserve_mcp.money.tables import SpendEvent
from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.migrate import upgrade

PG_ADMIN_URL = os.environ.get(
    "AISERVE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AISERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

T0 = 1_700_000_000.0
HOUR = 3600
DAY = 86_400


def usd(value: str) -> Decimal:
    return Decimal(value)


@dataclass
class Backend:
    """A store under test, a way to open another store over the same data, and a count of stored spends."""

    name: str
    store: SpendStore
    another: Callable[[], Awaitable[SpendStore]]
    events: Callable[[str], Awaitable[int]]
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _sql_backend(name: str, url: str, cleanups: list[Callable[[], Awaitable[None]]]) -> Backend:
    db = Database(url)
    cleanups.append(db.dispose)

    async def another() -> SpendStore:
        other = Database(url)
        cleanups.append(other.dispose)
        return SqlSpendStore(other)

    async def events(scope: str) -> int:
        async with db.session() as session:
            count = await session.scalar(select(func.count()).where(SpendEvent.scope == scope))
        return int(count or 0)

    return Backend(name, SqlSpendStore(db), another, events, cleanups)


def _redis() -> Redis:
    """A client that queues callers for one of 50 connections rather than refusing the 51st."""
    return Redis(connection_pool=BlockingConnectionPool.from_url(REDIS_URL, max_connections=50))


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    cleanups: list[Callable[[], Awaitable[None]]] = []
    try:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'spend.db'}"
            await anyio.to_thread.run_sync(upgrade, url)
            yield _sql_backend("sqlite", url, cleanups)
        elif request.param == "postgresql":
            name = f"aiserve_spend_{uuid.uuid4().hex[:12]}"
            admin = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL))  # CI starts PostgreSQL: never skip
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
                url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
                await anyio.to_thread.run_sync(upgrade, url)
                backend = _sql_backend("postgresql", url, cleanups)
                try:
                    yield backend
                finally:
                    for cleanup in reversed(cleanups):
                        await cleanup()
                    cleanups.clear()
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
        else:
            redis = _redis()
            cleanups.append(redis.aclose)
            await redis.ping()  # CI starts Redis: never skip
            prefix = f"aiserve-test:{uuid.uuid4().hex[:8]}:"

            async def another() -> SpendStore:
                other = _redis()
                cleanups.append(other.aclose)
                return RedisSpendStore(other, prefix)

            async def events(scope: str) -> int:
                return int(await redis.zcard(f"{prefix}spend:{{{scope}}}:ev"))

            try:
                yield Backend("redis", RedisSpendStore(redis, prefix), another, events, cleanups)
            finally:
                keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
                if keys:
                    await redis.delete(*keys)
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()


def spent(totals: list[WindowTotal]) -> dict[tuple[str, str], Decimal]:
    return {(t.scope, t.name): t.spent for t in totals}


async def test_concurrent_spends_never_overrun_the_limit(backend: Backend) -> None:
    windows = [WindowLimit("hourly", HOUR, usd("10.00"))]
    scopes = [("user:race", windows)]
    started = time.perf_counter()
    decisions = await asyncio.gather(
        *(
            backend.store.spend(scopes, usd("0.02"), record=True, idempotency_key=None, now=T0 + i / 1000)
            for i in range(1000)
        )
    )
    elapsed = time.perf_counter() - started
    print(f"{backend.name}: 1000 concurrent spends in {elapsed:.2f} s")
    assert sum(d.allowed for d in decisions) == 500
    assert sum(not d.allowed for d in decisions) == 500
    assert all(not d.duplicate for d in decisions)
    for decision in decisions:
        if decision.allowed:
            assert decision.totals[0].spent <= usd("10.00")
        else:
            assert decision.totals[0].spent == usd("10.00")
            assert decision.violations[0].spent == usd("10.02")
    (total,) = await backend.store.totals("user:race", windows, T0 + 2)
    assert total.spent == usd("10.00")
    assert await backend.events("user:race") == 500


async def test_stores_sharing_the_data_never_overrun_the_limit(backend: Backend) -> None:
    stores = [backend.store, await backend.another()]
    windows = [WindowLimit("daily", DAY, usd("5.00"))]
    scopes = [("user:shared", windows), ("key:shared", [WindowLimit("hourly", HOUR, usd("100"))])]
    decisions = await asyncio.gather(
        *(
            stores[i % 2].spend(scopes, usd("0.05"), record=True, idempotency_key=None, now=T0)
            for i in range(200)
        )
    )
    assert sum(d.allowed for d in decisions) == 100
    assert spent(await backend.store.totals("user:shared", windows, T0)) == {("user:shared", "daily"): 5}
    assert await backend.events("key:shared") == 100


async def test_a_spend_that_fits_the_hour_but_not_the_day_is_refused_everywhere(backend: Backend) -> None:
    windows = [WindowLimit("hourly", HOUR, usd("100")), WindowLimit("daily", DAY, usd("100"))]
    scopes = [("user:a", windows)]
    earlier = await backend.store.spend(
        scopes, usd("95"), record=True, idempotency_key=None, now=T0 - 20 * HOUR
    )
    assert earlier.allowed
    decision = await backend.store.spend(scopes, usd("10"), record=True, idempotency_key=None, now=T0)
    assert not decision.allowed
    assert not decision.duplicate
    assert decision.violations == [WindowTotal("user:a", "daily", DAY, usd("100"), usd("105"), 4 * HOUR)]
    assert spent(decision.totals) == {("user:a", "hourly"): 0, ("user:a", "daily"): 95}
    totals = await backend.store.totals("user:a", windows, T0)
    assert [(t.spent, t.resets_in_s) for t in totals] == [(usd("0"), 0), (usd("95"), 4 * HOUR)]
    assert await backend.events("user:a") == 1


async def test_a_spend_leaves_its_window_exactly_one_window_later(backend: Backend) -> None:
    windows = [WindowLimit("hourly", HOUR, usd("1"))]
    scopes = [("user:b", windows)]
    first = await backend.store.spend(scopes, usd("1"), record=True, idempotency_key=None, now=T0)
    assert first.allowed
    assert first.totals == [WindowTotal("user:b", "hourly", HOUR, usd("1"), usd("1"), HOUR)]

    async def at(offset: float) -> tuple[Decimal, int]:
        (total,) = await backend.store.totals("user:b", windows, T0 + offset)
        return total.spent, total.resets_in_s

    assert await at(0) == (usd("1"), HOUR)
    assert await at(1) == (usd("1"), HOUR - 1)
    assert await at(0.25) == (usd("1"), HOUR)
    assert await at(HOUR - 0.5) == (usd("1"), 1)
    assert await at(HOUR - 0.001) == (usd("1"), 1)
    assert await at(HOUR) == (usd("0"), 0)
    assert await at(HOUR + 1) == (usd("0"), 0)

    late = await backend.store.spend(
        scopes, usd("0.000001"), record=False, idempotency_key=None, now=T0 + HOUR - 0.001
    )
    assert not late.allowed
    assert late.violations[0].spent == usd("1.000001")
    on_time = await backend.store.spend(scopes, usd("1"), record=True, idempotency_key=None, now=T0 + HOUR)
    assert on_time.allowed
    assert on_time.totals[0].spent == 1
    assert on_time.totals[0].resets_in_s == HOUR


async def test_the_tighter_scope_refuses_and_neither_records(backend: Backend) -> None:
    user = ("user:c", [WindowLimit("daily", DAY, usd("100"))])
    key = ("key:c", [WindowLimit("daily", DAY, usd("5"))])
    assert (
        await backend.store.spend([user, key], usd("3"), record=True, idempotency_key=None, now=T0)
    ).allowed
    decision = await backend.store.spend([user, key], usd("3"), record=True, idempotency_key=None, now=T0 + 1)
    assert not decision.allowed
    assert decision.violations == [WindowTotal("key:c", "daily", DAY, usd("5"), usd("6"), DAY - 1)]
    assert spent(decision.totals) == {("user:c", "daily"): 3, ("key:c", "daily"): 3}
    assert spent(await backend.store.totals("user:c", user[1], T0 + 1)) == {("user:c", "daily"): 3}
    assert spent(await backend.store.totals("key:c", key[1], T0 + 1)) == {("key:c", "daily"): 3}
    assert await backend.events("user:c") == 1
    assert await backend.events("key:c") == 1
    alone = await backend.store.spend([user], usd("3"), record=True, idempotency_key=None, now=T0 + 2)
    assert alone.allowed
    assert spent(alone.totals) == {("user:c", "daily"): 6}


async def test_an_idempotency_key_records_once(backend: Backend) -> None:
    windows = [WindowLimit("daily", DAY, usd("100"))]
    scopes = [("user:d", windows), ("key:d", windows)]
    first = await backend.store.spend(scopes, usd("2"), record=True, idempotency_key="req-1", now=T0)
    assert (first.allowed, first.duplicate) == (True, False)
    again = await backend.store.spend(scopes, usd("2"), record=True, idempotency_key="req-1", now=T0 + 5)
    assert (again.allowed, again.duplicate) == (True, True)
    assert again.violations == []
    assert spent(again.totals) == {("user:d", "daily"): 2, ("key:d", "daily"): 2}
    check = await backend.store.spend(scopes, usd("2"), record=False, idempotency_key="req-1", now=T0 + 6)
    assert check.duplicate
    assert await backend.events("user:d") == 1
    assert await backend.events("key:d") == 1

    other_user = [("user:e", windows), ("key:d", windows)]
    other = await backend.store.spend(other_user, usd("2"), record=True, idempotency_key="req-1", now=T0 + 7)
    assert (other.allowed, other.duplicate) == (True, False)
    assert spent(other.totals) == {("user:e", "daily"): 2, ("key:d", "daily"): 4}

    tight = [("user:d", [WindowLimit("daily", DAY, usd("3"))])]
    refused = await backend.store.spend(tight, usd("2"), record=True, idempotency_key="req-2", now=T0 + 8)
    assert (refused.allowed, refused.duplicate) == (False, False)
    retried = await backend.store.spend(scopes, usd("2"), record=True, idempotency_key="req-2", now=T0 + 9)
    assert (retried.allowed, retried.duplicate) == (True, False)
    assert await backend.events("user:d") == 2


async def test_a_reset_window_stops_counting_while_the_others_go_on(backend: Backend) -> None:
    hourly, daily = WindowLimit("hourly", HOUR, usd("10")), WindowLimit("daily", DAY, usd("100"))
    windows = [hourly, daily]
    scopes = [("user:f", windows)]
    assert (await backend.store.spend(scopes, usd("5"), record=True, idempotency_key=None, now=T0)).allowed
    await backend.store.reset("user:f", "hourly", T0 + 10)
    assert spent(await backend.store.totals("user:f", windows, T0 + 10)) == {
        ("user:f", "hourly"): 0,
        ("user:f", "daily"): 5,
    }
    await backend.store.reset("user:f", "hourly", T0 + 5)
    assert spent(await backend.store.totals("user:f", [hourly], T0 + 10)) == {("user:f", "hourly"): 0}

    at_reset = await backend.store.spend(scopes, usd("10"), record=True, idempotency_key=None, now=T0 + 10)
    assert at_reset.allowed
    assert spent(at_reset.totals) == {("user:f", "hourly"): 10, ("user:f", "daily"): 15}
    assert [t.resets_in_s for t in at_reset.totals] == [HOUR, DAY - 10]
    full = await backend.store.spend(scopes, usd("1"), record=False, idempotency_key=None, now=T0 + 11)
    assert [v.name for v in full.violations] == ["hourly"]

    await backend.store.reset("user:f", None, T0 + 20)
    everything = [*windows, WindowLimit("weekly", 7 * DAY, usd("1000"))]
    assert set(spent(await backend.store.totals("user:f", everything, T0 + 20)).values()) == {0}
    assert await backend.events("user:f") == 2
    later = await backend.store.spend(scopes, usd("1"), record=True, idempotency_key=None, now=T0 + 30)
    assert spent(later.totals) == {("user:f", "hourly"): 1, ("user:f", "daily"): 1}


async def test_a_check_records_nothing(backend: Backend) -> None:
    windows = [WindowLimit("hourly", HOUR, usd("10"))]
    scopes = [("user:g", windows)]
    check = await backend.store.spend(scopes, usd("4"), record=False, idempotency_key="req-9", now=T0)
    assert (check.allowed, check.duplicate, check.violations) == (True, False, [])
    assert spent(check.totals) == {("user:g", "hourly"): 0}
    too_much = await backend.store.spend(scopes, usd("11"), record=False, idempotency_key=None, now=T0)
    assert not too_much.allowed
    assert too_much.violations[0].spent == 11
    assert await backend.events("user:g") == 0
    spend = await backend.store.spend(scopes, usd("4"), record=True, idempotency_key="req-9", now=T0)
    assert (spend.allowed, spend.duplicate) == (True, False)


async def test_amounts_are_exact_micro_dollars(backend: Backend) -> None:
    windows = [WindowLimit("hourly", HOUR, usd("1"))]
    scopes = [("user:h", windows)]
    for i in range(10):
        decision = await backend.store.spend(
            scopes, usd("0.1"), record=True, idempotency_key=None, now=T0 + i
        )
        assert decision.allowed
    (total,) = await backend.store.totals("user:h", windows, T0 + 10)
    assert total.spent == usd("1.000000")
    assert str(total.spent) == "1.000000"
    tiny = await backend.store.spend(
        scopes, usd("0.0000001"), record=False, idempotency_key=None, now=T0 + 10
    )
    assert tiny.violations[0].spent == usd("1.000001")
    zero = [("user:i", [WindowLimit("hourly", HOUR, usd("0"))])]
    assert not (
        await backend.store.spend(zero, usd("0.01"), record=True, idempotency_key=None, now=T0)
    ).allowed


@pytest.mark.parametrize(
    ("scopes", "amount"),
    [
        ([("user:x", [WindowLimit("hourly", HOUR, usd("1"))])], usd("0")),
        ([("user:x", [WindowLimit("hourly", HOUR, usd("1"))])], usd("-1")),
        ([("user:x", [WindowLimit("hourly", HOUR, usd("1"))])], Decimal("NaN")),
        ([], usd("1")),
        ([("user:x", [WindowLimit("hourly", 0, usd("1"))])], usd("1")),
        ([("user:x", [WindowLimit("hourly", HOUR, usd("-0.01"))])], usd("1")),
        ([("", [WindowLimit("hourly", HOUR, usd("1"))])], usd("1")),
        ([("user:x", []), ("user:x", [])], usd("1")),
    ],
)
async def test_bad_input_is_refused_before_any_io(
    tmp_path: Path, scopes: list[tuple[str, list[WindowLimit]]], amount: Decimal
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'never.db'}")
    redis = Redis.from_url("redis://127.0.0.1:1/0")
    stores: list[SpendStore] = [SqlSpendStore(db), RedisSpendStore(redis, "unused:")]
    try:
        for store in stores:
            with pytest.raises(ValidationFailed):
                await store.spend(scopes, amount, record=True, idempotency_key=None, now=T0)
            with pytest.raises(ValidationFailed):
                await store.totals("user:x", [WindowLimit("hourly", -1, usd("1"))], T0)
            with pytest.raises(ValidationFailed):
                await store.reset("user:x", "*", T0)
    finally:
        await db.dispose()
        await redis.aclose()
    assert not (tmp_path / "never.db").exists()


async def test_cancel_takes_a_spend_back_in_every_scope(backend: Backend) -> None:
    store = backend.store
    scopes = [
        ("user:c", [WindowLimit("hourly", 3600, Decimal(10))]),
        ("key:c", [WindowLimit("hourly", 3600, Decimal(5))]),
    ]
    first = await store.spend(scopes, Decimal(4), record=True, idempotency_key="ctr_1", now=1000.0)
    assert first.allowed
    await store.cancel(["user:c", "key:c"], "ctr_1")
    for scope, windows in scopes:
        (total,) = await store.totals(scope, windows, 1001.0)
        assert total.spent == 0
    again = await store.spend(scopes, Decimal(4), record=True, idempotency_key="ctr_1", now=1002.0)
    assert again.allowed and not again.duplicate
    await store.cancel(["user:c", "key:c"], "never-recorded")
    (total,) = await store.totals("user:c", scopes[0][1], 1003.0)
    assert total.spent == 4
