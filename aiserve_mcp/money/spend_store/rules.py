"""What both spend stores share: validating a spend, rounding to micro-dollars, and deciding a spend from
what already counts in each window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.money.spend_store.base import Scoped, SpendDecision, WindowLimit, WindowTotal

MICRO = Decimal("0.000001")
MAX_AMOUNT = Decimal(1_000_000_000)
MAX_SCOPE_LEN = 80
MAX_WINDOW_NAME_LEN = 40
MAX_IDEMPOTENCY_KEY_LEN = 200
ALL_WINDOWS = "*"


@dataclass(frozen=True)
class Counted:
    """What counts in one window before this spend: the sum in micro-dollars and the oldest spend's time."""

    micros: int
    oldest: float | None


def _micros(amount: Decimal) -> int:
    return int(amount.quantize(MICRO, rounding=ROUND_CEILING).scaleb(6))


def usd(micros: int) -> Decimal:
    """Micro-dollars as USD with six decimal places."""
    return (Decimal(micros) * MICRO).quantize(MICRO)


def _check_scope(scope: str) -> None:
    if not isinstance(scope, str) or not 0 < len(scope) <= MAX_SCOPE_LEN:
        raise ValidationFailed(f"a spending scope is 1 to {MAX_SCOPE_LEN} characters", {"scope": scope})


def check_windows(scope: str, windows: Sequence[WindowLimit]) -> None:
    """Refuse a bad scope, a repeated or reserved window name, a window of no time or a negative limit."""
    _check_scope(scope)
    names: set[str] = set()
    for window in windows:
        if not 0 < len(window.name) <= MAX_WINDOW_NAME_LEN or window.name == ALL_WINDOWS:
            raise ValidationFailed(
                f"a window name is 1 to {MAX_WINDOW_NAME_LEN} characters and not {ALL_WINDOWS!r}",
                {"scope": scope, "window": window.name},
            )
        if window.name in names:
            raise ValidationFailed("window names repeat", {"scope": scope, "window": window.name})
        names.add(window.name)
        if isinstance(window.seconds, bool) or not isinstance(window.seconds, int) or window.seconds <= 0:
            raise ValidationFailed(
                "a window lasts a whole number of seconds > 0", {"scope": scope, "window": window.name}
            )
        if not isinstance(window.limit, Decimal) or not window.limit.is_finite() or window.limit < 0:
            raise ValidationFailed(
                "a window limit is a finite Decimal >= 0", {"scope": scope, "window": window.name}
            )


def check_spend(scopes: Sequence[Scoped], amount: Decimal, idempotency_key: str | None) -> int:
    """Validate a spend; return its amount in micro-dollars."""
    if not scopes:
        raise ValidationFailed("a spend needs at least one scope")
    seen: set[str] = set()
    for scope, windows in scopes:
        check_windows(scope, windows)
        if scope in seen:
            raise ValidationFailed("scopes repeat", {"scope": scope})
        seen.add(scope)
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
        raise ValidationFailed("a spend amount is a finite Decimal > 0", {"amount": str(amount)})
    if amount > MAX_AMOUNT:
        raise ValidationFailed(f"a spend amount is at most {MAX_AMOUNT}", {"amount": str(amount)})
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LEN:
        raise ValidationFailed(f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters")
    return _micros(amount)


def check_reset(scope: str, window: str | None) -> str:
    """Validate a reset; return the window name it applies to, ``ALL_WINDOWS`` for every window."""
    _check_scope(scope)
    if window is None:
        return ALL_WINDOWS
    if not 0 < len(window) <= MAX_WINDOW_NAME_LEN or window == ALL_WINDOWS:
        raise ValidationFailed(f"a window name is 1 to {MAX_WINDOW_NAME_LEN} characters", {"window": window})
    return window


def window_total(
    scope: str, window: WindowLimit, micros: int, oldest: float | None, now: float
) -> WindowTotal:
    """A window's total with ``micros`` counted, the oldest of them spent at ``oldest``."""
    resets_in = 0 if oldest is None else max(0, math.ceil(oldest + window.seconds - now))
    return WindowTotal(scope, window.name, window.seconds, window.limit, usd(micros), resets_in)


def violates(window: WindowLimit, counted: Counted, amount_micros: int) -> bool:
    """Whether spending ``amount_micros`` more would pass the window's limit."""
    return usd(counted.micros + amount_micros) > window.limit


def decide(
    scopes: Sequence[Scoped],
    counted: Sequence[Sequence[Counted]],
    amount_micros: int,
    *,
    recorded: bool,
    duplicate: bool,
    now: float,
) -> SpendDecision:
    """The decision of a spend from what counted in each window before it (see :class:`SpendDecision`)."""
    totals: list[WindowTotal] = []
    violations: list[WindowTotal] = []
    for (scope, windows), scope_counted in zip(scopes, counted, strict=True):
        for window, before in zip(windows, scope_counted, strict=True):
            if not duplicate and violates(window, before, amount_micros):
                after_oldest = now if before.oldest is None else min(before.oldest, now)
                violations.append(
                    window_total(scope, window, before.micros + amount_micros, after_oldest, now)
                )
            if recorded:
                oldest = now if before.oldest is None else min(before.oldest, now)
                totals.append(window_total(scope, window, before.micros + amount_micros, oldest, now))
            else:
                totals.append(window_total(scope, window, before.micros, before.oldest, now))
    return SpendDecision(
        allowed=duplicate or not violations, totals=totals, violations=violations, duplicate=duplicate
    )
