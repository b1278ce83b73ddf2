"""A short-lived cache with one load in flight per key: offer searches (marketplaces rate-limit them and
renting re-checks the offer anyway), checked credentials and model records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values kept for ``ttl_s`` seconds (0: never kept), at most ``max_entries`` of them."""

    def __init__(
        self, ttl_s: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 100_000
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The cached value for ``key`` (and ``True``), or ``load()``'s (and ``False``). Concurrent misses
        for one key share a single ``load()``; failures are not cached."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1], True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), False
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody is warned about it
            raise
        else:
            future.set_result(value)
            if self._ttl_s > 0:
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
                self._entries[key] = (self._clock() + self._ttl_s, value)
            return value, False
        finally:
            del self._inflight[key]

    def invalidate(self, match: Callable[[K], bool]) -> None:
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def forget_values(self, match: Callable[[V], bool]) -> None:
        """Drop every entry whose value ``match`` accepts."""
        for key in [k for k, (_, value) in self._entries.items() if match(value)]:
            del self._entries[key]
