"""Shared load state for the balancer: in process memory, or atomic in Redis so server processes share it.

State is kept per pool (an opaque key such as ``"<user_id>:<pool>"``) and, inside a pool, per backend:

- ``in_flight``: requests started and not yet finished (never below zero);
- ``ewma_ms``: exponentially weighted moving average of response times, ``None`` until the first
  finished request. A finished request with latency ``x`` updates it to ``alpha * x + (1 - alpha) * ewma``;
  the first one sets it to ``x``. A *failed* request is recorded as slow: ``x = max(measured,
  penalty_factor * ewma)`` (4x by default) when an EWMA exists, else ``x = max(measured, penalty_floor_ms)``
  (1000 ms by default), so a backend that fails fast does not attract traffic;
- ``requests`` / ``failures``: finished requests, and the failed ones among them;
- ``consecutive_failures``: failures since the last success;
- ``ejected_until``: set to ``now + eject_for_s`` by every failure that leaves ``consecutive_failures >=
  eject_after``, cleared by any success. While ``now < ejected_until`` the backend is *ejected*; once
  ``ejected_until <= now`` it is *half-open*: ``claim_probe`` lets exactly one caller through and re-arms
  ``ejected_until = now + eject_for_s`` as a lease, so a probe that never reports back (a crashed process,
  a cancelled request) is retried after another ``eject_for_s``.

A finish reported with ``ok=None`` (an abandoned request, e.g. cancelled) only frees the in-flight slot: it
counts neither as a request nor for health or latency.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

IDLE_TTL_S = 86_400
"""State of a pool (Redis keys, or a memory pool) is dropped after this long without a write."""


@dataclass(frozen=True)
class BackendLoad:
    """One backend's load and health as the balancer sees it.

    ``healthy`` is False while the backend is ejected or half-open; ``ejected_until`` is then the clock
    time the ejection ends (half-open, a probe may be claimed, once it is ``<= now``)."""

    id: str
    in_flight: int
    ewma_ms: float | None
    requests: int
    failures: int
    consecutive_failures: int
    healthy: bool
    ejected_until: float | None


@dataclass(frozen=True)
class LoadPolicy:
    """How finished requests turn into latency estimates and health (see the module docstring)."""

    eject_after: int = 3
    eject_for_s: float = 30.0
    ewma_alpha: float = 0.3
    penalty_factor: float = 4.0
    penalty_floor_ms: float = 1000.0

    def __post_init__(self) -> None:
        if self.eject_after < 1:
            raise ValueError("eject_after must be at least 1")
        if not self.eject_for_s > 0:
            raise ValueError("eject_for_s must be positive")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")


DEFAULT_POLICY = LoadPolicy()


class LoadStore(Protocol):
    """Per-pool load state; a pool key is an opaque string like ``"<user_id>:<pool>"``."""

    async def acquire(self, pool: str, backend: str) -> None:
        """Count one more request in flight on ``backend``."""
        ...

    async def release(
        self,
        pool: str,
        backend: str,
        latency_ms: float,
        ok: bool | None,
        now: float,
        policy: LoadPolicy = DEFAULT_POLICY,
    ) -> None:
        """Count one request finished: ``ok`` True (success), False (failure) or None (abandoned)."""
        ...

    async def loads(self, pool: str, backends: Sequence[str], now: float) -> dict[str, BackendLoad]:
        """The load of each of ``backends`` (a backend never seen is idle and healthy)."""
        ...

    async def next_counter(self, pool: str) -> int:
        """0, 1, 2, ... per pool."""
        ...

    async def smooth_weighted_pick(self, pool: str, weights: Mapping[str, float]) -> str:
        """One step of nginx's smooth weighted round robin over ``weights`` (in order; ties: first)."""
        ...

    async def claim_probe(
        self, pool: str, backend: str, now: float, policy: LoadPolicy = DEFAULT_POLICY
    ) -> bool:
        """True for exactly one caller once ``backend``'s ejection has expired (half-open)."""
        ...


def swrr_step(current: Mapping[str, float], weights: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    """nginx's smooth weighted round robin: add each weight to its current weight, pick the largest
    current weight (ties: first in ``weights`` order), subtract the total weight from it. Current weights
    of backends absent from ``weights`` are dropped. Returns the pick and the new current weights."""
    if not weights:
        raise ValueError("smooth weighted round robin needs at least one backend")
    updated: dict[str, float] = {}
    total = 0.0
    best: str | None = None
    for backend, weight in weights.items():
        value = current.get(backend, 0.0) + weight
        updated[backend] = value
        total += weight
        if best is None or value > updated[best]:
            best = backend
    assert best is not None
    updated[best] -= total
    return best, updated


@dataclass
class _BackendState:
    in_flight: int = 0
    ewma_ms: float | None = None
    requests: int = 0
    failures: int = 0
    streak: int = 0
    ejected_until: float | None = None

    def snapshot(self, backend: str) -> BackendLoad:
        return BackendLoad(
            id=backend,
            in_flight=self.in_flight,
            ewma_ms=self.ewma_ms,
            requests=self.requests,
            failures=self.failures,
            consecutive_failures=self.streak,
            healthy=self.ejected_until is None,
            ejected_until=self.ejected_until,
        )

    def finish(self, latency_ms: float, ok: bool | None, now: float, policy: LoadPolicy) -> None:
        if self.in_flight > 0:
            self.in_flight -= 1
        if ok is None:
            return
        sample = latency_ms
        if not ok:
            if self.ewma_ms is not None:
                sample = max(sample, policy.penalty_factor * self.ewma_ms)
            else:
                sample = max(sample, policy.penalty_floor_ms)
        if self.ewma_ms is None:
            self.ewma_ms = sample
        else:
            self.ewma_ms = policy.ewma_alpha * sample + (1 - policy.ewma_alpha) * self.ewma_ms
        self.requests += 1
        if ok:
            self.streak = 0
            self.ejected_until = None
        else:
            self.failures += 1
            self.streak += 1
            if self.streak >= policy.eject_after:
                self.ejected_until = now + policy.eject_for_s


@dataclass
class _PoolState:
    backends: dict[str, _BackendState] = field(default_factory=dict)
    counter: int = 0
    swrr: dict[str, float] = field(default_factory=dict)
    touched: float = 0.0


class MemoryLoadStore:
    """Load state for one process. Every method runs without awaiting, so each is atomic under asyncio.

    Pools without a write for ``idle_ttl_s`` seconds (measured with ``time.monotonic``) are dropped."""

    def __init__(self, idle_ttl_s: float = IDLE_TTL_S) -> None:
        self._pools: dict[str, _PoolState] = {}
        self._idle_ttl_s = idle_ttl_s
        self._writes = 0

    def _pool(self, pool: str) -> _PoolState:
        now = time.monotonic()
        self._writes += 1
        if self._writes % 4096 == 0:
            cutoff = now - self._idle_ttl_s
            self._pools = {k: v for k, v in self._pools.items() if v.touched >= cutoff}
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = _PoolState()
        state.touched = now
        return state

    def _backend(self, pool: str, backend: str) -> _BackendState:
        backends = self._pool(pool).backends
        state = backends.get(backend)
        if state is None:
            state = backends[backend] = _BackendState()
        return state

    async def acquire(self, pool: str, backend: str) -> None:
        self._backend(pool, backend).in_flight += 1

    async def release(
        self,
        pool: str,
        backend: str,
        latency_ms: float,
        ok: bool | None,
        now: float,
        policy: LoadPolicy = DEFAULT_POLICY,
    ) -> None:
        self._backend(pool, backend).finish(latency_ms, ok, now, policy)

    async def loads(self, pool: str, backends: Sequence[str], now: float) -> dict[str, BackendLoad]:
        state = self._pools.get(pool)
        known = state.backends if state is not None else {}
        return {b: known.get(b, _BackendState()).snapshot(b) for b in backends}

    async def next_counter(self, pool: str) -> int:
        state = self._pool(pool)
        value = state.counter
        state.counter += 1
        return value

    async def smooth_weighted_pick(self, pool: str, weights: Mapping[str, float]) -> str:
        state = self._pool(pool)
        picked, state.swrr = swrr_step(state.swrr, weights)
        return picked

    async def claim_probe(
        self, pool: str, backend: str, now: float, policy: LoadPolicy = DEFAULT_POLICY
    ) -> bool:
        state = self._backend(pool, backend)
        if state.ejected_until is None or state.ejected_until > now:
            return False
        state.ejected_until = now + policy.eject_for_s
        return True


# Each script below is one atomic read-modify-write; every write refreshes the key's one-day expiry.
# Numbers are stored with %.17g so doubles round-trip exactly (Lua and Python then compute the same values).

_ACQUIRE = """
redis.call('HINCRBY', KEYS[1], 'inflight', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# ARGV: latency_ms, outcome (1 ok, 0 failed, -1 abandoned), now, eject_after, eject_for_s, alpha,
# penalty_factor, penalty_floor_ms, ttl_ms
_RELEASE = """
local key = KEYS[1]
local inflight = tonumber(redis.call('HGET', key, 'inflight') or '0')
if inflight > 0 then
  redis.call('HINCRBY', key, 'inflight', -1)
end
local outcome = tonumber(ARGV[2])
if outcome >= 0 then
  local sample = tonumber(ARGV[1])
  local ewma = tonumber(redis.call('HGET', key, 'ewma') or '')
  if outcome == 0 then
    if ewma then
      sample = math.max(sample, tonumber(ARGV[7]) * ewma)
    else
      sample = math.max(sample, tonumber(ARGV[8]))
    end
  end
  if ewma then
    local alpha = tonumber(ARGV[6])
    ewma = alpha * sample + (1 - alpha) * ewma
  else
    ewma = sample
  end
  redis.call('HSET', key, 'ewma', string.format('%.17g', ewma))
  redis.call('HINCRBY', key, 'req', 1)
  if outcome == 1 then
    redis.call('HSET', key, 'streak', 0)
    redis.call('HDEL', key, 'ej')
  else
    redis.call('HINCRBY', key, 'fail', 1)
    local streak = redis.call('HINCRBY', key, 'streak', 1)
    if streak >= tonumber(ARGV[4]) then
      redis.call('HSET', key, 'ej', string.format('%.17g', tonumber(ARGV[3]) + tonumber(ARGV[5])))
    end
  end
end
redis.call('PEXPIRE', key, ARGV[9])
return 1
"""

_LOADS = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'inflight', 'ewma', 'req', 'fail', 'streak', 'ej')
  for j = 1, 6 do
    out[#out + 1] = v[j]
  end
end
return out
"""

_COUNTER = """
local value = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return value - 1
"""

# ARGV: ttl_ms, then backend id and weight pairs in order.
_SWRR = """
local current = {}
local stored = redis.call('HGETALL', KEYS[1])
for i = 1, #stored, 2 do
  current[stored[i]] = tonumber(stored[i + 1])
end
local ids, values = {}, {}
local total, best = 0, 0
for i = 1, (#ARGV - 1) / 2 do
  local id = ARGV[2 * i]
  local weight = tonumber(ARGV[2 * i + 1])
  ids[i] = id
  values[i] = (current[id] or 0) + weight
  total = total + weight
  if best == 0 or values[i] > values[best] then
    best = i
  end
end
values[best] = values[best] - total
redis.call('DEL', KEYS[1])
for i = 1, #ids do
  redis.call('HSET', KEYS[1], ids[i], string.format('%.17g', values[i]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return ids[best]
"""

# ARGV: now, eject_for_s, ttl_ms
_CLAIM = """
local ejected = tonumber(redis.call('HGET', KEYS[1], 'ej') or '')
if not ejected or ejected > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'ej', string.format('%.17g', tonumber(ARGV[1]) + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(_text(value))


class RedisLoadStore:
    """Load state shared by every process that uses the same Redis and key prefix.

    Keys: ``<prefix>lb:{<pool>}:rr`` (round-robin counter), ``<prefix>lb:{<pool>}:swrr`` (smooth weighted
    round robin current weights) and ``<prefix>lb:{<pool>}:b:<backend>`` (one hash per backend), with ``}``
    and ``%`` in the pool percent-encoded. Each expires after a day without a write. Works with clients
    created with or without ``decode_responses``."""

    def __init__(self, redis: Redis, prefix: str, idle_ttl_s: int = IDLE_TTL_S) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = idle_ttl_s * 1000
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._loads = redis.register_script(_LOADS)
        self._counter = redis.register_script(_COUNTER)
        self._swrr = redis.register_script(_SWRR)
        self._claim = redis.register_script(_CLAIM)

    def _key(self, pool: str, suffix: str) -> str:
        escaped = pool.replace("%", "%25").replace("}", "%7D")
        return f"{self._prefix}lb:{{{escaped}}}:{suffix}"

    def _backend_key(self, pool: str, backend: str) -> str:
        return self._key(pool, f"b:{backend}")

    async def acquire(self, pool: str, backend: str) -> None:
        await self._acquire(keys=[self._backend_key(pool, backend)], args=[self._ttl_ms])

    async def release(
        self,
        pool: str,
        backend: str,
        latency_ms: float,
        ok: bool | None,
        now: float,
        policy: LoadPolicy = DEFAULT_POLICY,
    ) -> None:
        outcome = -1 if ok is None else int(ok)
        args = [
            float(latency_ms),
            outcome,
            float(now),
            policy.eject_after,
            float(policy.eject_for_s),
            float(policy.ewma_alpha),
            float(policy.penalty_factor),
            float(policy.penalty_floor_ms),
            self._ttl_ms,
        ]
        await self._release(keys=[self._backend_key(pool, backend)], args=args)

    async def loads(self, pool: str, backends: Sequence[str], now: float) -> dict[str, BackendLoad]:
        if not backends:
            return {}
        raw = await self._loads(keys=[self._backend_key(pool, b) for b in backends])
        result: dict[str, BackendLoad] = {}
        for i, backend in enumerate(backends):
            inflight, ewma, requests, failures, streak, ejected = raw[6 * i : 6 * i + 6]
            ejected_until = _number(ejected)
            result[backend] = BackendLoad(
                id=backend,
                in_flight=int(_number(inflight) or 0),
                ewma_ms=_number(ewma),
                requests=int(_number(requests) or 0),
                failures=int(_number(failures) or 0),
                consecutive_failures=int(_number(streak) or 0),
                healthy=ejected_until is None,
                ejected_until=ejected_until,
            )
        return result

    async def next_counter(self, pool: str) -> int:
        return int(await self._counter(keys=[self._key(pool, "rr")], args=[self._ttl_ms]))

    async def smooth_weighted_pick(self, pool: str, weights: Mapping[str, float]) -> str:
        if not weights:
            raise ValueError("smooth weighted round robin needs at least one backend")
        args: list[str | int | float] = [self._ttl_ms]
        for backend, weight in weights.items():
            args += [backend, float(weight)]
        return _text(await self._swrr(keys=[self._key(pool, "swrr")], args=args))

    async def claim_probe(
        self, pool: str, backend: str, now: float, policy: LoadPolicy = DEFAULT_POLICY
    ) -> bool:
        args = [float(now), float(policy.eject_for_s), self._ttl_ms]
        return bool(await self._claim(keys=[self._backend_key(pool, backend)], args=args))
