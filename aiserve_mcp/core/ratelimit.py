"""Request budgets per principal (and per client address for login and registration)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiserve_mcp.core.errors import RateLimited
from aiserve_mcp.core.rate_windows import MemoryRateWindows, RateWindows, Take
from aiserve_mcp.core.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """The state of one budget after a request: what the ``X-RateLimit-*`` headers report."""

    limit: int
    remaining: int
    reset_after_s: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after_s),
        }


class RateLimiter:
    """Spends requests from shared sliding windows. While the shared store (Redis) cannot be reached,
    budgets are counted in this process alone, so the API keeps answering; the switch is logged once each
    way, and each request counted so is added to ``aiserve_rate_limit_fallbacks_total``."""

    def __init__(self, windows: RateWindows, window_s: int, telemetry: Telemetry) -> None:
        self._windows = windows
        self._fallback = MemoryRateWindows()
        self._telemetry = telemetry
        self.window_s = window_s
        self.degraded = False

    async def spend(self, key: str, limit: int) -> Budget:
        """Count one request against ``key``; raise ``RateLimited`` past ``limit`` in this window."""
        take = await self._take(key, limit)
        if not take.allowed:
            retry = max(1, math.ceil(take.retry_after_s))
            raise RateLimited(
                f"rate limit of {limit} requests per {self.window_s}s exceeded; retry in {retry}s",
                retry_after_s=retry,
                details={"limit": limit, "window_s": self.window_s, "retry_after_s": retry},
            )
        return Budget(limit, take.remaining, max(1, math.ceil(take.reset_after_s)))

    async def _take(self, key: str, limit: int) -> Take:
        try:
            take = await self._windows.take(key, limit, self.window_s)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not self.degraded:
                self.degraded = True
                log.warning(
                    "Redis is unreachable (%s); rate limits are counted per process until it answers", exc
                )
            self._telemetry.rate_limit_fallbacks.inc()
            return await self._fallback.take(key, limit, self.window_s)
        if self.degraded:
            self.degraded = False
            log.warning("Redis answers again; rate limits are shared again")
        return take
