"""Leases: a named job that one process at a time may run, in process memory or in Redis so that every
process sharing it takes turns.

``acquire`` returns a token when the lease was free (or had lapsed after ``ttl_s`` seconds, so that a
process that died holding it blocks the others for ``ttl_s`` at most), None while another holder has it;
``release`` frees it only for the holder of that token.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from redis.asyncio import Redis


class Leases(Protocol):
    async def acquire(self, name: str, ttl_s: float) -> str | None:
        """A token for the lease ``name``, held for ``ttl_s`` seconds at most; None while it is held."""
        ...

    async def release(self, name: str, token: str) -> None:
        """Free the lease ``name`` if ``token`` still holds it."""
        ...


class MemoryLeases:
    """Leases of one process: its callers take turns, other processes are not seen. They never lapse (a
    holder in this process releases what it took)."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    async def acquire(self, name: str, ttl_s: float) -> str | None:
        if name in self._held:  # a holder in this process releases it before it is gone
            return None
        token = self._held[name] = secrets.token_hex(8)
        return token

    async def release(self, name: str, token: str) -> None:
        if self._held.get(name) == token:
            del self._held[name]


# Delete the key only while it holds this token: a holder whose lease lapsed and was taken by another
# must not free the new holder's.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeases:
    """Leases shared by every process that uses the same Redis and key prefix."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._release = redis.register_script(_RELEASE_SCRIPT)

    async def acquire(self, name: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        key = f"{self._prefix}lease:{name}"
        taken = await self._redis.set(key, token, nx=True, px=max(1, round(ttl_s * 1000)))
        return token if taken else None

    async def release(self, name: str, token: str) -> None:
        await self._release(keys=[f"{self._prefix}lease:{name}"], args=[token])
