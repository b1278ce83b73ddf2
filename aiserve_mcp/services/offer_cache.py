"""A short-lived cache of offer searches, with one request in flight per key.

Marketplaces rate-limit searches (vast.ai per endpoint and per day), and their offers change slowly
enough that a few seconds of staleness is harmless: renting re-checks the offer anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
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
                self._entries[key] = (self._clock() + self._ttl_s, value)
            return value, False
        finally:
            del self._inflight[key]

    def invalidate(self, match: Callable[[K], bool]) -> None:
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]
