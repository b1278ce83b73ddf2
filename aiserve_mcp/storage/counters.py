"""Fixed-window counters for rate limits: in process memory, or atomic in Redis so processes share them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


@dataclass(frozen=True)
class WindowCount:
    """The count in the current window after this hit, and the seconds until the window ends."""

    count: int
    reset_after_s: float


class WindowCounter(Protocol):
    async def hit(self, key: str, window_s: int) -> WindowCount:
        """Count one hit on ``key`` in the current ``window_s``-second window."""
        ...


class MemoryWindowCounter:
    """Counters for one process. Windows are aligned to the epoch, so every key resets together."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, key: str, window_s: int) -> WindowCount:
        now = time.time()
        window = int(now // window_s)
        # No await between the read and the write: on one event loop this update is atomic.
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        count = self._counts.get((key, window), 0) + 1
        self._counts[(key, window)] = count
        return WindowCount(count, (window + 1) * window_s - now)


# INCR and set the expiry in one step, so a crash between them cannot leave a key that never expires.
_HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""


class RedisWindowCounter:
    """Counters shared by every process that uses the same Redis and key prefix."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_HIT_SCRIPT)

    async def hit(self, key: str, window_s: int) -> WindowCount:
        window = int(time.time() // window_s)
        redis_key = f"{self._prefix}rl:{key}:{window}"
        count, ttl_ms = await self._script(keys=[redis_key], args=[window_s * 1000])
        return WindowCount(int(count), max(int(ttl_ms), 0) / 1000)
