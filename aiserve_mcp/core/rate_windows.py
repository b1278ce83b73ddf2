"""Request budgets over sliding windows: in process memory, or atomic in Redis so every process shares them.

A budget of ``limit`` requests per ``window_s`` seconds admits a request when fewer than ``limit`` requests
were admitted in the ``window_s`` seconds before it. Every admitted request is kept (its time) until it
leaves the window, so the bound is exact: no span of ``window_s`` seconds ever holds more than ``limit``
admitted requests. Fixed windows let a client spend twice its budget across a window's edge; this does
not. Refused requests are not kept: a client that keeps knocking gets a slot as soon as one frees.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


@dataclass(frozen=True)
class Take:
    """One request against a budget: admitted or not, what is left, and the waits the headers report."""

    allowed: bool
    remaining: int
    reset_after_s: float  # until the whole budget is free again
    retry_after_s: float  # until the next request would be admitted (0 when this one was)


class RateWindows(Protocol):
    async def take(self, key: str, limit: int, window_s: int) -> Take:
        """Spend one request of ``key``'s budget of ``limit`` per ``window_s`` seconds, if one is left."""
        ...


class MemoryRateWindows:
    """Budgets of one process. ``clock`` is injectable so tests can move time."""

    _PRUNE_AT = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._admitted: dict[str, deque[float]] = {}

    async def take(self, key: str, limit: int, window_s: int) -> Take:
        now = self._clock()
        # No await in this method: on one event loop each take is atomic.
        if len(self._admitted) > self._PRUNE_AT:
            self._admitted = {k: d for k, d in self._admitted.items() if d and d[-1] > now - window_s}
        admitted = self._admitted.setdefault(key, deque())
        while admitted and admitted[0] <= now - window_s:
            admitted.popleft()
        if len(admitted) >= limit:
            return Take(False, 0, admitted[-1] + window_s - now, admitted[0] + window_s - now)
        admitted.append(now)
        return Take(True, limit - len(admitted), window_s, 0.0)


# The same rule on Redis's own clock (so processes on hosts with skewed clocks agree), in whole
# microseconds: exact in a double, and written with %.0f since Lua's tostring keeps only 14 digits. The
# sorted set holds one member per admitted request, scored by its time; it expires with its newest member.
_TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
  local newest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  return {0, 0, newest + window - now, oldest + window - now}
end
local stamp = string.format('%.0f', now)
redis.call('ZADD', KEYS[1], stamp, stamp .. ':' .. count)
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return {1, limit - count - 1, window, 0}
"""


class RedisRateWindows:
    """Budgets shared by every process that uses the same Redis and key prefix."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_TAKE_SCRIPT)

    async def take(self, key: str, limit: int, window_s: int) -> Take:
        allowed, remaining, reset_us, retry_us = await self._script(
            keys=[f"{self._prefix}rl:{key}"], args=[limit, window_s * 1_000_000]
        )
        return Take(bool(allowed), int(remaining), int(reset_us) / 1e6, int(retry_us) / 1e6)
