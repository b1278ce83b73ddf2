"""Request budgets per principal (and per client address for login and registration)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiserve_mcp.errors import RateLimited
from aiserve_mcp.storage.counters import WindowCounter


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
    def __init__(self, counter: WindowCounter, window_s: int) -> None:
        self._counter = counter
        self.window_s = window_s

    async def spend(self, key: str, limit: int) -> Budget:
        """Count one request against ``key``; raise ``RateLimited`` past ``limit`` in this window."""
        hit = await self._counter.hit(key, self.window_s)
        reset = max(1, math.ceil(hit.reset_after_s))
        budget = Budget(limit, max(limit - hit.count, 0), reset)
        if hit.count > limit:
            raise RateLimited(
                f"rate limit of {limit} requests per {self.window_s}s exceeded; retry in {reset}s",
                retry_after_s=reset,
                details={"limit": limit, "window_s": self.window_s, "retry_after_s": reset},
            )
        return budget
