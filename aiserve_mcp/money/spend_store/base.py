"""Spending guardrails' store: an atomic check-and-record of a spend against rolling windows of every scope.

A scope (``user:<id>``, ``key:<api key id>``) has windows such as ``hourly`` (3600 s) or ``daily`` (86400 s),
each with a USD limit. Time is the caller's ``now`` in epoch seconds (pass ``time.time()``); spends are
stamped with it.

Rolling-window semantics, identical in :class:`SqlSpendStore` and :class:`RedisSpendStore`:

* A spend recorded at ``at`` counts in a window of ``seconds`` at time ``now`` while ``at > now - seconds``:
  it counts from ``at`` up to, but not at, ``at + seconds`` (a spend at ``t`` has left a 3600 s window at
  exactly ``t + 3600``).
* After ``reset(scope, window, r)`` a spend counts in that window only when also ``at >= r``: spends made
  before ``r`` stop counting, a spend at ``r`` itself still counts. ``reset(scope, None, r)`` does this for
  every window of the scope, named or not. Resets only move forward; recorded spends are never deleted by it.
* ``spent`` of a window is the sum of the amounts that count in it; ``resets_in_s`` is the whole number of
  seconds (rounded up) until the oldest of them leaves the window, 0 when none counts.
* ``spend`` is one atomic step over every window of every scope: when ``spent + amount > limit`` for any
  window nothing is recorded anywhere; otherwise, when ``record``, the amount is recorded once per scope at
  ``now``. ``spent + amount == limit`` is allowed.

Amounts are Decimals rounded up to whole micro-dollars (6 decimal places), at most ``MAX_AMOUNT``. An
idempotency key belongs to the first scope of a call: a spend whose key was already recorded for that scope
records nothing and is answered ``duplicate=True``, ``allowed=True``. The SQL store remembers keys for ever;
the Redis store for the longest window of the call or one day, whichever is longer.

Pass the same windows for a scope on every call: the Redis store keeps a scope's spends for the longest
window it has been asked about (at least one day), and its keys expire after that long without a write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True)
class WindowLimit:
    """A rolling window of ``seconds`` (> 0) in which at most ``limit`` USD (>= 0) may be spent."""

    name: str
    seconds: int
    limit: Decimal


@dataclass(frozen=True)
class WindowTotal:
    """One window of one scope: ``spent`` (see :class:`SpendDecision`) against ``limit``."""

    scope: str
    name: str
    seconds: int
    limit: Decimal
    spent: Decimal
    resets_in_s: int


@dataclass(frozen=True)
class SpendDecision:
    """The outcome of :meth:`SpendStore.spend`.

    ``totals`` lists every window of every scope, in the order given, with ``spent`` including the amount when
    it was recorded and excluding it otherwise. ``violations`` lists the windows where the spend did not fit,
    with ``spent`` = spent before + amount (105 spent of 100)."""

    allowed: bool
    totals: list[WindowTotal]
    violations: list[WindowTotal]
    duplicate: bool


Scoped = tuple[str, Sequence[WindowLimit]]


class SpendStore(Protocol):
    async def spend(
        self,
        scopes: Sequence[Scoped],
        amount: Decimal,
        *,
        record: bool,
        idempotency_key: str | None,
        now: float,
    ) -> SpendDecision:
        """ONE atomic step over every window of every scope: each window's spent = sum of amounts recorded for
        that scope that count in it (see the module docstring); if spent + amount > limit for any window,
        nothing is recorded (allowed False, violations listed); otherwise, when ``record``, the amount is
        recorded once per scope at ``now``. With ``idempotency_key`` already recorded for scopes[0], nothing
        is recorded and duplicate=True. amount must be > 0 (else ValidationFailed). record=False is a pure
        check."""
        ...

    async def totals(self, scope: str, windows: Sequence[WindowLimit], now: float) -> list[WindowTotal]:
        """What counts now in each of ``windows`` of ``scope``."""
        ...

    async def cancel(self, scopes: Sequence[str], idempotency_key: str) -> None:
        """Take back the spend recorded under ``idempotency_key`` in every one of ``scopes`` (an action
        that did not happen); the key may then be used again. Nothing happens when there is none."""
        ...

    async def reset(self, scope: str, window: str | None, now: float) -> None:
        """Stop counting spends made before ``now`` in the named window (or in every window when None); the
        history is kept (events are not deleted)."""
        ...
