"""Load balancing over the running instances of a pool: five strategies, shared load state, health ejection.

Every strategy chooses among the *eligible* backends: those given, minus ``exclude``, minus ejected and
half-open ones, kept in the given order. Definitions:

- ``round_robin``: strict rotation, ``eligible[counter % n]`` where ``counter`` is the pool's shared
  counter (0, 1, 2, ...; one step per pick, across every process sharing the store).
- ``equal_weighted``: a uniform random choice among the eligible backends.
- ``weighted_round_robin``: nginx's smooth weighted round robin. Each pick adds every eligible backend's
  ``weight`` to its current weight, picks the largest current weight (ties: first in order) and subtracts
  the total weight from the picked one. Weights 5, 1, 1 for a, b, c give a a b a c a a, repeating. The
  current weights live in the store, per pool; those of backends not eligible at a pick are dropped (a
  backend that comes back starts again from 0).
- ``least_connections``: the backend with the fewest requests in flight; ties are broken by rotating
  through the tied backends with the pool's shared counter (``tied[counter % len(tied)]``), so an idle
  pool is served in turn rather than always by its first backend.
- ``least_response_time``: power of two choices. Two distinct eligible backends are drawn at random (the
  only one, when one is eligible); the one with the lower cost ``ewma_ms * (in_flight + 1)`` wins; on equal
  cost, the one with fewer requests in flight, then the first drawn. A backend without an EWMA yet is
  costed with the mean EWMA of the eligible backends that have one (0 when none has), so a new instance
  gets a fair first estimate.

Health: ``eject_after`` consecutive failures eject a backend for ``eject_for_s`` seconds (each further
failure while the streak lasts restarts that period). Once the period ends the backend is half-open: the
next ``pick`` that sees it claims it as a probe (exactly one caller wins) and returns it whatever the
strategy; a success makes it healthy again, a failure ejects it again. Any success resets the streak and
ends an ejection, including a late success of a request started before the ejection. If no backend is
eligible, ``pick`` raises ``NoHealthyBackend`` (HTTP 503) with ``retry_after_s`` = seconds until the
earliest ejection ends, at least 1.

Outcomes (``track`` / ``finish``): an ``Outcome.fail()`` call or an ``Exception`` escaping the block is a
failure; a normal exit is a success; cancellation (``asyncio.CancelledError``, which is also anyio's
cancellation on asyncio) or any other ``BaseException`` abandons the request: its in-flight slot is freed
but it counts neither as a request nor for health or latency, since the backend did nothing wrong. A
timeout meant to count as a backend failure must therefore surface inside the block as an exception (an
httpx timeout, or ``async with asyncio.timeout(...)`` inside the block), not as a cancellation from outside.
Failures are recorded as slow for the EWMA: see ``aiserve_mcp.traffic.load_store``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio

from aiserve_mcp.core.errors import ServiceUnavailable, ValidationFailed
from aiserve_mcp.traffic.load_store import (
    DEFAULT_POLICY,
    BackendLoad,
    LoadPolicy,
    LoadStore,
    MemoryLoadStore,
    RedisLoadStore,
    swrr_step,
)

__all__ = [
    "DEFAULT_POLICY",
    "EMPTY_POOL_RETRY_AFTER_S",
    "STRATEGIES",
    "Backend",
    "BackendLoad",
    "Balancer",
    "LoadPolicy",
    "LoadStore",
    "MemoryLoadStore",
    "NoHealthyBackend",
    "Outcome",
    "RedisLoadStore",
    "Strategy",
    "Ticket",
    "swrr_step",
]

Strategy = Literal[
    "round_robin", "equal_weighted", "weighted_round_robin", "least_connections", "least_response_time"
]
STRATEGIES: tuple[Strategy, ...] = (
    "round_robin",
    "equal_weighted",
    "weighted_round_robin",
    "least_connections",
    "least_response_time",
)

EMPTY_POOL_RETRY_AFTER_S = 30
"""``retry_after_s`` when a pool has no running instances (starting one takes a while)."""

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """One instance a pool can send requests to: ``id`` is its contract id; ``weight`` (> 0) is used by
    ``weighted_round_robin`` only."""

    id: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"backend {self.id!r}: weight must be a finite number > 0")


class NoHealthyBackend(ServiceUnavailable):
    """No backend of the pool can take the request now; retry after ``retry_after_s`` seconds."""

    retry_after_s: int

    def __init__(self, message: str, retry_after_s: int, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details, retry_after_s=max(1, int(retry_after_s)))


class Outcome:
    """Yielded by ``Balancer.track``: call ``fail()`` to mark an upstream failure without raising."""

    def __init__(self) -> None:
        self.failed = False

    def fail(self) -> None:
        """Count this request as failed (e.g. an HTTP 5xx or a timeout from the backend)."""
        self.failed = True


@dataclass(frozen=True)
class Ticket:
    """A request in flight, from ``Balancer.begin`` to ``Balancer.finish``."""

    pool: str
    backend: str
    started: float


class Balancer:
    """Picks a backend per request and tracks in-flight counts, latency and health in a ``LoadStore``.

    ``clock`` returns seconds; every process sharing a ``RedisLoadStore`` must use one clock they agree on
    (``time.time``), whereas ``time.monotonic`` suits a ``MemoryLoadStore``."""

    def __init__(
        self,
        store: LoadStore,
        *,
        eject_after: int = 3,
        eject_for_s: float = 30.0,
        ewma_alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.policy = LoadPolicy(eject_after=eject_after, eject_for_s=eject_for_s, ewma_alpha=ewma_alpha)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (load spreading, not security)
        self._background: set[asyncio.Future[None]] = set()

    async def pick(
        self,
        pool: str,
        strategy: Strategy,
        backends: Sequence[Backend],
        exclude: Collection[str] = (),
    ) -> Backend:
        """Choose a backend for one request (definitions in the module docstring).

        Raises ``NoHealthyBackend`` when ``backends`` is empty, when ``exclude`` leaves none, or when every
        remaining one is ejected; ``ValidationFailed`` for an unknown strategy."""
        if strategy not in STRATEGIES:
            raise ValidationFailed(
                f"unknown load-balancing strategy {strategy!r}", {"allowed": list(STRATEGIES)}
            )
        if not backends:
            raise NoHealthyBackend(
                "the pool has no running instances",
                EMPTY_POOL_RETRY_AFTER_S,
                {"retry_after_s": EMPTY_POOL_RETRY_AFTER_S, "backends": 0},
            )
        skipped = set(exclude)
        candidates = [b for b in backends if b.id not in skipped]
        if not candidates:
            raise NoHealthyBackend(
                "every instance of the pool has already been tried for this request",
                1,
                {"retry_after_s": 1, "backends": len(backends)},
            )
        now = self._clock()
        loads = await self.store.loads(pool, [b.id for b in candidates], now)
        for backend in candidates:
            until = loads[backend.id].ejected_until
            if (
                until is not None
                and until <= now
                and await self.store.claim_probe(pool, backend.id, now, self.policy)
            ):
                return backend
        eligible = [b for b in candidates if loads[b.id].healthy]
        if not eligible:
            ends = [u for b in candidates if (u := loads[b.id].ejected_until) is not None and u > now]
            retry = max(1, math.ceil(min(ends) - now)) if ends else 1
            raise NoHealthyBackend(
                f"every instance of the pool is failing health checks; retry in {retry}s",
                retry,
                {"retry_after_s": retry, "backends": len(backends), "ejected": [b.id for b in candidates]},
            )
        return await self._choose(pool, strategy, eligible, loads)

    async def _choose(
        self, pool: str, strategy: Strategy, eligible: list[Backend], loads: dict[str, BackendLoad]
    ) -> Backend:
        if strategy == "round_robin":
            return eligible[await self.store.next_counter(pool) % len(eligible)]
        if strategy == "equal_weighted":
            return self._rng.choice(eligible)
        if strategy == "weighted_round_robin":
            by_id = {b.id: b for b in eligible}
            chosen = await self.store.smooth_weighted_pick(pool, {b.id: b.weight for b in eligible})
            return by_id[chosen]
        if strategy == "least_connections":
            fewest = min(loads[b.id].in_flight for b in eligible)
            tied = [b for b in eligible if loads[b.id].in_flight == fewest]
            if len(tied) == 1:
                return tied[0]
            return tied[await self.store.next_counter(pool) % len(tied)]
        if len(eligible) == 1:
            return eligible[0]
        first, second = self._rng.sample(eligible, 2)
        known = [e for b in eligible if (e := loads[b.id].ewma_ms) is not None]
        default = sum(known) / len(known) if known else 0.0

        def rank(backend: Backend) -> tuple[float, int]:
            load = loads[backend.id]
            ewma = load.ewma_ms if load.ewma_ms is not None else default
            return ewma * (load.in_flight + 1), load.in_flight

        return second if rank(second) < rank(first) else first

    async def begin(self, pool: str, backend: str) -> Ticket:
        """Count a request in flight on ``backend`` and start its clock; pair with ``finish``.

        The store call completes even if the caller is cancelled meanwhile; the slot is then freed again
        (as abandoned) once it has been taken."""
        started = self._clock()
        acquired = self._spawn(self.store.acquire(pool, backend))
        try:
            await self._settle(acquired)
        except asyncio.CancelledError:

            def undo(task: asyncio.Future[None]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self._spawn(self.store.release(pool, backend, 0.0, None, self._clock(), self.policy))

            acquired.add_done_callback(undo)
            raise
        return Ticket(pool, backend, started)

    async def finish(self, ticket: Ticket, ok: bool | None) -> float:
        """Free the in-flight slot and record the outcome: ``ok`` True (success), False (failure, recorded
        as slow) or None (abandoned: slot only). Returns the measured latency in milliseconds. The store
        call completes even if the caller is cancelled meanwhile."""
        now = self._clock()
        latency_ms = max(0.0, (now - ticket.started) * 1000.0)
        released = self._spawn(
            self.store.release(ticket.pool, ticket.backend, latency_ms, ok, now, self.policy)
        )
        await self._settle(released)
        return latency_ms

    @asynccontextmanager
    async def _track(self, pool: str, backend: str) -> AsyncIterator[Outcome]:
        ticket = await self.begin(pool, backend)
        outcome = Outcome()
        try:
            yield outcome
        except Exception:
            await self.finish(ticket, False)
            raise
        except BaseException:
            await self.finish(ticket, None)
            raise
        await self.finish(ticket, not outcome.failed)

    def track(self, pool: str, backend: str) -> AbstractAsyncContextManager[Outcome]:
        """Track one request to ``backend``: in flight from enter to exit, whatever the exit.

        Exit without ``fail()``: success. ``fail()`` or an ``Exception`` (re-raised): failure.
        Cancellation or another ``BaseException`` (re-raised): abandoned, slot freed only."""
        return self._track(pool, backend)

    async def loads(self, pool: str, backends: Sequence[str]) -> dict[str, BackendLoad]:
        """The current load and health of each of ``backends`` in ``pool``."""
        return await self.store.loads(pool, backends, self._clock())

    async def drain(self) -> None:
        """Wait for store calls still completing in the background after a cancellation."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, call: Awaitable[None]) -> asyncio.Future[None]:
        future = asyncio.ensure_future(call)
        self._background.add(future)
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._background.discard(future)
        if not future.cancelled() and (error := future.exception()) is not None:
            log.warning("load-balancer store call failed: %r", error)

    @staticmethod
    async def _settle(future: Awaitable[T]) -> T:
        with anyio.CancelScope(shield=True):
            result = await asyncio.shield(future)
        return result
