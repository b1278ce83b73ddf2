"""Sliding-window rate budgets: the exact bound in memory and in Redis, and the fallback while Redis is
away."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from aiserve_mcp.core.errors import RateLimited
from aiserve_mcp.core.rate_windows import MemoryRateWindows, RedisRateWindows
from aiserve_mcp.core.ratelimit import RateLimiter
from aiserve_mcp.core.telemetry import Telemetry
from tests.conftest import LOCAL_REDIS_URL, free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    gaps=st.lists(st.floats(0, 4, allow_nan=False), min_size=1, max_size=60),
)
async def test_no_span_of_a_window_admits_more_than_the_limit(limit: int, gaps: list[float]) -> None:
    window = 3
    clock = Clock()
    windows = MemoryRateWindows(clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        take = await windows.take("k", limit, window)
        in_window = [t for t in admitted if t > clock.now - window]
        # Admitted exactly when the window before it holds fewer than the limit.
        assert take.allowed == (len(in_window) < limit)
        if take.allowed:
            admitted.append(clock.now)
            assert take.remaining == limit - len(in_window) - 1
        else:
            assert take.remaining == 0
            # The advertised wait is exactly when the oldest admitted request leaves the window.
            assert take.retry_after_s == pytest.approx(min(in_window) + window - clock.now)
    for i, start in enumerate(admitted):
        assert sum(1 for t in admitted[i:] if t < start + window) <= limit


async def test_a_fixed_window_edge_gives_no_second_budget() -> None:
    clock = Clock()
    windows = MemoryRateWindows(clock)
    clock.now = 59.9  # just before a minute boundary, where fixed windows would reset
    assert all([(await windows.take("k", 10, 60)).allowed for _ in range(10)])
    clock.now = 60.1
    refused = await windows.take("k", 10, 60)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(59.8)
    clock.now = 119.95
    assert (await windows.take("k", 10, 60)).allowed


async def test_redis_windows_bound_every_process_alike(redis_prefix: str) -> None:
    redis = Redis.from_url(LOCAL_REDIS_URL)
    first, second = RedisRateWindows(redis, redis_prefix), RedisRateWindows(redis, redis_prefix)
    try:
        takes = [await (first, second)[i % 2].take("k", 3, 1) for i in range(4)]
        assert [t.allowed for t in takes] == [True, True, True, False]
        assert [t.remaining for t in takes] == [2, 1, 0, 0]
        assert 0 < takes[3].retry_after_s <= 1
        await asyncio.sleep(takes[3].retry_after_s + 0.05)
        assert (await first.take("k", 3, 1)).allowed
        # Hammered for 2.5 s: no span of one second (less a margin for the two clocks) admits more than 3.
        admitted: list[float] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            if (await second.take("hammer", 3, 1)).allowed:
                admitted.append(time.monotonic())
            await asyncio.sleep(0.005)
        assert len(admitted) >= 6  # slots free up as the window slides
        for i, start in enumerate(admitted):
            assert sum(1 for t in admitted[i:] if t < start + 0.98) <= 3
    finally:
        await redis.aclose()


async def test_the_limiter_counts_in_process_while_redis_is_away() -> None:
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    telemetry = Telemetry()
    limiter = RateLimiter(RedisRateWindows(unreachable, "x:"), 60, telemetry)
    try:
        budgets = [await limiter.spend("user:1", 2) for _ in range(2)]
        assert [b.remaining for b in budgets] == [1, 0]
        with pytest.raises(RateLimited):
            await limiter.spend("user:1", 2)
        assert limiter.degraded
        assert telemetry.registry.get_sample_value("aiserve_rate_limit_fallbacks_total") == 3.0
    finally:
        await unreachable.aclose()
