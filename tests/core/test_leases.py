"""Leases: one holder at a time, in memory and across processes through Redis; a lapsed lease is free
again, and a holder whose lease lapsed cannot free the next holder's."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from aiserve_mcp.core.leases import MemoryLeases, RedisLeases
from tests.conftest import LOCAL_REDIS_URL


async def test_a_memory_lease_has_one_holder_until_released() -> None:
    leases = MemoryLeases()
    token = await leases.acquire("job", 60)
    assert token is not None and await leases.acquire("job", 60) is None
    assert await leases.acquire("other", 60) is not None
    await leases.release("job", "not-the-token")
    assert await leases.acquire("job", 60) is None
    await leases.release("job", token)
    assert await leases.acquire("job", 60) is not None


async def test_a_redis_lease_has_one_holder_across_processes(redis_prefix: str) -> None:
    redis = Redis.from_url(LOCAL_REDIS_URL)
    first, second = RedisLeases(redis, redis_prefix), RedisLeases(redis, redis_prefix)
    try:
        token = await first.acquire("job", 60)
        assert token is not None and await second.acquire("job", 60) is None
        await second.release("job", "not-the-token")
        assert await second.acquire("job", 60) is None
        await first.release("job", token)
        assert await second.acquire("job", 60) is not None

        lapsing = await first.acquire("lapsing", 0.1)
        assert lapsing is not None
        await asyncio.sleep(0.2)  # its holder died: the lease is free after its time
        next_holder = await second.acquire("lapsing", 60)
        assert next_holder is not None
        await first.release("lapsing", lapsing)  # the late holder frees nothing
        assert await first.acquire("lapsing", 60) is None
    finally:
        await redis.aclose()
