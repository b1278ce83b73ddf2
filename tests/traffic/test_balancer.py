"""Load balancing: exact strategy sequences, in-flight accounting on every exit path, latency-aware picks,
ejection with a single half-open probe, and state shared through Redis by several balancers."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from redis.asyncio import Redis

from aiserve_mcp.core.errors import ServiceUnavailable, ValidationFailed, kind_of
from aiserve_mcp.traffic.balancer import (
    STRATEGIES,
    Backend,
    Balancer,
    LoadStore,
    MemoryLoadStore,
    NoHealthyBackend,
    RedisLoadStore,
    Strategy,
    swrr_step,
)

REDIS_URL = os.environ.get("AISERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POOL = "user-1:chat"
ABC = [Backend("a"), Backend("b"), Backend("c")]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[], LoadStore]


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Makes handles onto one shared load state: the same MemoryLoadStore, or a new Redis client and
    RedisLoadStore each call (like separate server processes) on one random key prefix."""
    if request.param == "memory":
        memory = MemoryLoadStore()
        yield lambda: memory
        return
    prefix = f"aiserve-test:lb:{uuid.uuid4().hex}:"
    clients: list[Redis] = []

    def make() -> LoadStore:
        client = Redis.from_url(REDIS_URL)
        clients.append(client)
        return RedisLoadStore(client, prefix)

    try:
        yield make
    finally:
        if clients:
            keys = [key async for key in clients[0].scan_iter(match=prefix + "*")]
            if keys:
                await clients[0].delete(*keys)
        for client in clients:
            await client.aclose()


@pytest.fixture
def store(stores: StoreFactory) -> LoadStore:
    return stores()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def balancer(store: LoadStore, clock: FakeClock) -> Balancer:
    return Balancer(store, clock=clock, rng=random.Random(1))


async def finish_one(balancer: Balancer, clock: FakeClock, backend: str, ms: float, ok: bool = True) -> None:
    async with balancer.track(POOL, backend) as outcome:
        clock.advance(ms / 1000)
        if not ok:
            outcome.fail()


async def picks(balancer: Balancer, strategy: Strategy, backends: list[Backend], n: int) -> str:
    chosen = [(await balancer.pick(POOL, strategy, backends)).id for _ in range(n)]
    return "".join(chosen)


# --- strategies -----------------------------------------------------------------------------------------


async def test_round_robin_is_a_strict_rotation(balancer: Balancer) -> None:
    assert await picks(balancer, "round_robin", ABC, 7) == "abcabca"


async def test_round_robin_skips_excluded_and_ejected_backends(balancer: Balancer, clock: FakeClock) -> None:
    assert (await balancer.pick(POOL, "round_robin", ABC, exclude={"a", "b"})).id == "c"
    for _ in range(3):
        await finish_one(balancer, clock, "b", 5, ok=False)
    assert set(await picks(balancer, "round_robin", ABC, 6)) == {"a", "c"}


async def test_smooth_weighted_round_robin_matches_nginx(balancer: Balancer) -> None:
    weighted = [Backend("a", 5), Backend("b", 1), Backend("c", 1)]
    assert await picks(balancer, "weighted_round_robin", weighted, 14) == "aabacaa" * 2


async def test_smooth_weighted_state_follows_the_backend_set(store: LoadStore) -> None:
    """Random subsets and fractional weights: the store agrees step by step with the reference algorithm,
    which drops the current weight of a backend as soon as it is absent from a pick."""
    rng = random.Random(3)
    universe = {"a": 5.0, "b": 0.1, "c": 2.5, "d": 1.0}
    current: dict[str, float] = {}
    for step in range(200):
        subset = {k: w for k, w in universe.items() if step < 20 or rng.random() < 0.7} or {"a": 5.0}
        expected, current = swrr_step(current, subset)
        assert await store.smooth_weighted_pick(POOL, subset) == expected, step


async def test_equal_weighted_is_uniform() -> None:
    balancer = Balancer(MemoryLoadStore(), rng=random.Random(7))
    counts = Counter([(await balancer.pick(POOL, "equal_weighted", ABC)).id for _ in range(30_000)])
    for backend in "abc":
        assert abs(counts[backend] / 30_000 - 1 / 3) < 0.03 / 3, counts


async def test_least_connections_picks_the_idle_backend(balancer: Balancer) -> None:
    assert await picks(balancer, "least_connections", ABC, 6) == "abcabc"  # all idle: in turn
    async with AsyncExitStack() as busy:
        await busy.enter_async_context(balancer.track(POOL, "a"))
        await busy.enter_async_context(balancer.track(POOL, "b"))
        await busy.enter_async_context(balancer.track(POOL, "b"))
        assert await picks(balancer, "least_connections", ABC, 4) == "cccc"
        await busy.enter_async_context(balancer.track(POOL, "c"))
        assert await picks(balancer, "least_connections", ABC, 3) == "aca"  # a and c tie at 1
    loads = await balancer.loads(POOL, ["a", "b", "c"])
    assert [loads[b].in_flight for b in "abc"] == [0, 0, 0]


async def test_least_response_time_moves_traffic_away_from_a_slow_backend(
    balancer: Balancer, clock: FakeClock
) -> None:
    latency = {"a": 10.0, "b": 12.0, "c": 200.0}
    chosen: Counter[str] = Counter()
    for _ in range(300):
        backend = (await balancer.pick(POOL, "least_response_time", ABC)).id
        chosen[backend] += 1
        await finish_one(balancer, clock, backend, latency[backend])
    assert chosen["c"] <= 3, chosen  # at most its first, unmeasured, tries
    assert chosen["a"] > chosen["b"] > 0, chosen
    loads = await balancer.loads(POOL, ["a", "b", "c"])
    assert loads["c"].ewma_ms is not None and loads["c"].ewma_ms > 100


async def test_least_response_time_costs_a_new_backend_at_the_mean(
    balancer: Balancer, clock: FakeClock
) -> None:
    await finish_one(balancer, clock, "a", 10)
    await finish_one(balancer, clock, "b", 30)
    pool = [Backend("a"), Backend("b"), Backend("new")]
    chosen = Counter([(await balancer.pick(POOL, "least_response_time", pool)).id for _ in range(300)])
    # new is costed at 20: it beats b (30) and loses to a (10), so b is never chosen.
    assert chosen["b"] == 0 and chosen["a"] > chosen["new"] > 50, chosen


async def test_least_response_time_without_estimates_prefers_fewer_in_flight(balancer: Balancer) -> None:
    async with balancer.track(POOL, "a"):
        chosen = {(await balancer.pick(POOL, "least_response_time", ABC[:2])).id for _ in range(20)}
    assert chosen == {"b"}
    assert (await balancer.pick(POOL, "least_response_time", ABC[:1])).id == "a"


# --- in-flight accounting ---------------------------------------------------------------------------------


async def test_in_flight_returns_to_zero_on_every_exit(balancer: Balancer, clock: FakeClock) -> None:
    async def load_of(backend: str = "a") -> tuple[int, int, int]:
        load = (await balancer.loads(POOL, [backend]))[backend]
        return load.in_flight, load.requests, load.failures

    async with balancer.track(POOL, "a"):
        assert await load_of() == (1, 0, 0)
    assert await load_of() == (0, 1, 0)

    with pytest.raises(RuntimeError):
        async with balancer.track(POOL, "a"):
            raise RuntimeError("upstream broke")
    assert await load_of() == (0, 2, 1)

    async with balancer.track(POOL, "a") as outcome:
        outcome.fail()
    assert await load_of() == (0, 3, 2)

    started = asyncio.Event()

    async def hang() -> None:
        async with balancer.track(POOL, "a"):
            started.set()
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hang(), 0.01)
    assert await load_of() == (0, 3, 2)  # abandoned: slot freed, not counted

    started.clear()
    task = asyncio.create_task(hang())
    await started.wait()
    assert await load_of() == (1, 3, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await load_of() == (0, 3, 2)

    with anyio.move_on_after(0.01):
        await hang()
    assert await load_of() == (0, 3, 2)
    assert (await balancer.loads(POOL, ["a"]))["a"].consecutive_failures == 2


async def test_a_second_cancellation_during_release_still_frees_the_slot(balancer: Balancer) -> None:
    started = asyncio.Event()

    async def hang() -> None:
        async with balancer.track(POOL, "a"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)  # the block is left; the release is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await balancer.drain()
    assert (await balancer.loads(POOL, ["a"]))["a"].in_flight == 0


async def test_failures_count_as_slow_in_the_ewma(balancer: Balancer, clock: FakeClock) -> None:
    await finish_one(balancer, clock, "a", 50, ok=False)  # no estimate yet: recorded as 1000 ms
    assert (await balancer.loads(POOL, ["a"]))["a"].ewma_ms == pytest.approx(1000)
    await finish_one(balancer, clock, "b", 100)
    assert (await balancer.loads(POOL, ["b"]))["b"].ewma_ms == pytest.approx(100)
    await finish_one(balancer, clock, "b", 50, ok=False)  # recorded as max(50, 4 x 100) = 400
    assert (await balancer.loads(POOL, ["b"]))["b"].ewma_ms == pytest.approx(0.3 * 400 + 0.7 * 100)
    await finish_one(balancer, clock, "b", 2000, ok=False)  # measured beats the penalty
    assert (await balancer.loads(POOL, ["b"]))["b"].ewma_ms == pytest.approx(0.3 * 2000 + 0.7 * 190)


# --- health -------------------------------------------------------------------------------------------------


async def test_consecutive_failures_eject_and_all_ejected_is_a_503(
    balancer: Balancer, clock: FakeClock
) -> None:
    for _ in range(2):
        await finish_one(balancer, clock, "a", 5, ok=False)
    await finish_one(balancer, clock, "a", 5)  # a success resets the streak
    for _ in range(2):
        await finish_one(balancer, clock, "a", 5, ok=False)
    assert (await balancer.loads(POOL, ["a"]))["a"].healthy
    await finish_one(balancer, clock, "a", 5, ok=False)
    load = (await balancer.loads(POOL, ["a"]))["a"]
    assert not load.healthy and load.consecutive_failures == 3
    assert load.ejected_until == pytest.approx(clock.now + 30)
    assert (load.requests, load.failures) == (6, 5)

    clock.advance(10)
    for backend in "bc":
        for _ in range(3):
            await finish_one(balancer, clock, backend, 5, ok=False)
    with pytest.raises(NoHealthyBackend) as refused:
        await balancer.pick(POOL, "least_connections", ABC)
    error = refused.value
    assert isinstance(error, ServiceUnavailable) and kind_of(error).http_status == 503
    assert error.retry_after_s == 20  # a's ejection ends first, 20 s from now
    assert error.details["retry_after_s"] == 20 and error.details["ejected"] == ["a", "b", "c"]


async def test_one_probe_after_the_ejection_then_recovery(
    balancer: Balancer, stores: StoreFactory, clock: FakeClock
) -> None:
    for _ in range(3):
        await finish_one(balancer, clock, "a", 5, ok=False)
    clock.advance(29.5)
    with pytest.raises(NoHealthyBackend) as refused:
        await balancer.pick(POOL, "round_robin", ABC[:1])
    assert refused.value.retry_after_s == 1
    clock.advance(1)
    pickers = [balancer, Balancer(stores(), clock=clock)]  # for Redis: another connection, as another process
    results = await asyncio.gather(
        *(picker.pick(POOL, "round_robin", ABC[:1]) for picker in pickers), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["Backend", "NoHealthyBackend"]
    # the probe holds a lease: nobody else gets a until it reports back
    assert set(await picks(balancer, "round_robin", ABC[:2], 4)) == {"b"}
    await finish_one(balancer, clock, "a", 5)  # the probe succeeds
    load = (await balancer.loads(POOL, ["a"]))["a"]
    assert load.healthy and load.consecutive_failures == 0 and load.ejected_until is None
    assert await picks(balancer, "round_robin", ABC[:2], 4) in ("abab", "baba")


async def test_a_failed_probe_ejects_again(balancer: Balancer, clock: FakeClock) -> None:
    for _ in range(3):
        await finish_one(balancer, clock, "a", 5, ok=False)
    clock.advance(31)
    assert (await balancer.pick(POOL, "least_connections", ABC)).id == "a"  # the probe, whatever the strategy
    await finish_one(balancer, clock, "a", 5, ok=False)
    load = (await balancer.loads(POOL, ["a"]))["a"]
    assert not load.healthy and load.ejected_until == pytest.approx(clock.now + 30)
    assert set(await picks(balancer, "round_robin", ABC, 6)) == {"b", "c"}


async def test_only_one_concurrent_claim_wins_the_probe(stores: StoreFactory, clock: FakeClock) -> None:
    first, second = stores(), stores()
    balancer = Balancer(first, clock=clock)
    for _ in range(3):
        await finish_one(balancer, clock, "a", 5, ok=False)
    clock.advance(30)
    claims = await asyncio.gather(*(s.claim_probe(POOL, "a", clock.now) for s in (first, second, first)))
    assert sorted(claims) == [False, False, True]


async def test_a_lost_probe_is_retried_after_another_period(balancer: Balancer, clock: FakeClock) -> None:
    for _ in range(3):
        await finish_one(balancer, clock, "a", 5, ok=False)
    clock.advance(30)
    probe = await balancer.pick(POOL, "round_robin", ABC[:1])
    with anyio.move_on_after(0.01):
        async with balancer.track(POOL, probe.id):
            await asyncio.Event().wait()  # cancelled: reports neither success nor failure
    with pytest.raises(NoHealthyBackend):
        await balancer.pick(POOL, "round_robin", ABC[:1])
    clock.advance(30)
    assert (await balancer.pick(POOL, "round_robin", ABC[:1])).id == "a"


async def test_empty_pools_exclusions_and_bad_input(balancer: Balancer) -> None:
    with pytest.raises(NoHealthyBackend, match="no running instances") as empty:
        await balancer.pick(POOL, "round_robin", [])
    assert empty.value.retry_after_s >= 1
    with pytest.raises(NoHealthyBackend, match="already been tried"):
        await balancer.pick(POOL, "round_robin", ABC, exclude=["a", "b", "c"])
    with pytest.raises(ValidationFailed):
        await balancer.pick(POOL, "fastest", ABC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        Backend("x", 0)
    assert STRATEGIES == (
        "round_robin",
        "equal_weighted",
        "weighted_round_robin",
        "least_connections",
        "least_response_time",
    )


async def test_pools_are_independent(balancer: Balancer, clock: FakeClock) -> None:
    for _ in range(3):
        await finish_one(balancer, clock, "a", 5, ok=False)
    assert (await balancer.pick("user-2:chat", "round_robin", ABC)).id == "a"
    assert (await balancer.loads("user-2:chat", ["a"]))["a"].healthy


# --- shared through Redis ---------------------------------------------------------------------------------


@pytest.fixture
async def redis_stores() -> AsyncIterator[tuple[Redis, str, StoreFactory]]:
    prefix = f"aiserve-test:lb:{uuid.uuid4().hex}:"
    clients: list[Redis] = []

    def make() -> LoadStore:
        client = Redis.from_url(REDIS_URL, decode_responses=len(clients) % 2 == 1)
        clients.append(client)
        return RedisLoadStore(client, prefix)

    admin = Redis.from_url(REDIS_URL)
    try:
        yield admin, prefix, make
    finally:
        keys = [key async for key in admin.scan_iter(match=prefix + "*")]
        if keys:
            await admin.delete(*keys)
        for client in [admin, *clients]:
            await client.aclose()


async def test_two_balancers_share_order_in_flight_and_health_through_redis(
    redis_stores: tuple[Redis, str, StoreFactory], clock: FakeClock
) -> None:
    _, _, make = redis_stores
    one = Balancer(make(), clock=clock)
    two = Balancer(make(), clock=clock)  # its own connection, decoding responses: another process
    order = [(await (one, two)[i % 2].pick(POOL, "round_robin", ABC)).id for i in range(6)]
    assert order == list("abcabc")
    weighted = [Backend("a", 5), Backend("b", 1), Backend("c", 1)]
    sequence = [(await (one, two)[i % 2].pick(POOL, "weighted_round_robin", weighted)).id for i in range(7)]
    assert "".join(sequence) == "aabacaa"

    async with one.track(POOL, "a"), one.track(POOL, "b"):
        assert (await two.loads(POOL, ["a", "b", "c"]))["a"].in_flight == 1
        assert (await two.pick(POOL, "least_connections", ABC)).id == "c"
    assert all(load.in_flight == 0 for load in (await two.loads(POOL, ["a", "b", "c"])).values())

    for _ in range(3):
        await finish_one(one, clock, "c", 5, ok=False)
    assert set(await picks(two, "round_robin", ABC, 4)) == {"a", "b"}


async def test_redis_keys_expire_after_a_day(
    redis_stores: tuple[Redis, str, StoreFactory], clock: FakeClock
) -> None:
    admin, prefix, make = redis_stores
    balancer = Balancer(make(), clock=clock)
    await balancer.pick(POOL, "round_robin", ABC)
    await balancer.pick(POOL, "weighted_round_robin", ABC)
    await finish_one(balancer, clock, "a", 5)
    keys = [key async for key in admin.scan_iter(match=prefix + "*")]
    assert len(keys) == 3
    for key in keys:
        assert 86_000_000 < await admin.pttl(key) <= 86_400_000
