"""Spending guardrails: limits over rolling windows, per user and per API key, enforced atomically.

A window is a rolling period ending now: ``hourly`` (3600 s), ``daily`` (86 400 s), ``weekly`` (7 days),
``monthly`` (30 days), or any duration a user names as ``<n>s``, ``<n>m``, ``<n>h``, ``<n>d`` or ``<n>w``
(e.g. ``5m``, ``72h``). A spend is allowed only if, in every window of the user and of the API key it
comes through, what was spent in that window plus the spend stays within the limit; checking and
recording are one atomic step (see ``money/spend_store/``), so concurrent spends never overrun a
limit. A user's windows are the defaults from ``AISERVE_SPENDING_LIMITS`` with their own settings on top;
an API key, like an OAuth client's grant (whose budget counts as the key's does), has only the budget set
for it. Raising a limit, removing one, or resetting a window needs the ``guardrails:admin`` scope, so an
agent's key can never lift its own limits; lowering needs none.

Each recorded spend is announced to its user on the ``spending`` stream (``spend.recorded`` with the
windows' totals), each spend refused with 402 (``spend.refused`` with the violated windows) and each
spend taken back (``spend.cancelled``); a check that records nothing announces nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select

from aiserve_mcp.core.errors import Forbidden, SpendingLimit, ValidationFailed
from aiserve_mcp.core.events import Event, EventBus
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.core.telemetry import Telemetry
from aiserve_mcp.money.spend_store.base import Scoped, SpendDecision, SpendStore, WindowLimit, WindowTotal
from aiserve_mcp.money.tables import GuardrailLimit
from aiserve_mcp.storage.database import Database

NAMED_WINDOWS = {"hourly": 3600, "daily": 86_400, "weekly": 7 * 86_400, "monthly": 30 * 86_400}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhdw])$")
MAX_WINDOW_S = 366 * 86_400
ADMIN_SCOPE = "guardrails:admin"


def window_seconds(name: str) -> int:
    """The length of a named window: hourly, daily, weekly, monthly, or ``<n><s|m|h|d|w>``."""
    if name in NAMED_WINDOWS:
        return NAMED_WINDOWS[name]
    match = _DURATION.match(name)
    if match is None:
        raise ValidationFailed(
            f"unknown window {name!r}: use hourly, daily, weekly, monthly or a duration like 5m, 72h, 2d"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_WINDOW_S:
        raise ValidationFailed(f"window {name!r} is longer than a year")
    return seconds


def user_scope(user_id: str) -> str:
    return f"user:{user_id}"


def key_scope(key_id: str) -> str:
    return f"key:{key_id}"


def grant_scope(grant_id: str) -> str:
    """The budget of an OAuth client's grant (a person's consent), kept like an API key's."""
    return f"grant:{grant_id}"


def credential_scope(principal: Principal) -> str | None:
    """The scope of the credential ``principal`` calls with (an API key or an OAuth grant): where its own
    budget and approval policy are kept; None for a login."""
    if principal.api_key_id is not None:
        return key_scope(principal.api_key_id)
    return grant_scope(principal.grant_id) if principal.grant_id is not None else None


def window_view(total: WindowTotal) -> dict[str, Any]:
    """A window as the API shows it (``spent`` includes the refused amount in a violation)."""
    return {
        "window": total.name,
        "scope": {"key": "api_key", "grant": "oauth_client"}.get(total.scope.split(":", 1)[0], "user"),
        "spent": float(total.spent),
        "limit": float(total.limit),
        "seconds": total.seconds,
        "resets_in_s": total.resets_in_s,
    }


class Guardrails:
    def __init__(
        self,
        db: Database,
        store: SpendStore,
        defaults: Mapping[str, Decimal],
        telemetry: Telemetry,
        events: EventBus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._events = events
        self._store = store
        self._defaults = {
            name: WindowLimit(name, window_seconds(name), limit) for name, limit in defaults.items()
        }
        self._telemetry = telemetry
        self._clock = clock

    async def _stored(self, scope: str) -> dict[str, WindowLimit]:
        async with self._db.session() as session:
            rows = await session.scalars(select(GuardrailLimit).where(GuardrailLimit.scope == scope))
            return {r.window: WindowLimit(r.window, r.seconds, r.limit) for r in rows}

    async def limits(self, scope: str) -> list[WindowLimit]:
        """A user's windows (defaults, overridden by their own) or an API key's budget (its own only)."""
        own = await self._stored(scope)
        merged = {**self._defaults, **own} if scope.startswith("user:") else own
        return sorted(merged.values(), key=lambda w: (w.seconds, w.name))

    async def scopes(self, principal: Principal) -> list[Scoped]:
        scopes: list[Scoped] = [
            (user_scope(principal.user_id), await self.limits(user_scope(principal.user_id)))
        ]
        budget = credential_scope(principal)
        if budget is not None:
            scopes.append((budget, await self.limits(budget)))
        return [(scope, windows) for scope, windows in scopes if windows]

    async def set_limits(
        self, principal: Principal, scope: str, changes: Mapping[str, Decimal | None]
    ) -> list[WindowLimit]:
        """Set (or with ``None`` remove) limits of ``scope``; raising or removing needs guardrails:admin."""
        current = {w.name: w for w in await self.limits(scope)}
        for name, limit in changes.items():
            before = current.get(name)
            raising = (
                limit is None
                or (before is None and scope.startswith("user:"))
                or (before is not None and limit > before.limit)
            )
            if raising and not principal.has_scope(ADMIN_SCOPE):
                raise Forbidden(
                    f"raising or removing the '{name}' limit needs the {ADMIN_SCOPE} scope "
                    "(lowering does not)",
                    {"required_scope": ADMIN_SCOPE, "window": name},
                )
        async with self._db.session() as session:
            for name, limit in changes.items():
                await session.execute(
                    delete(GuardrailLimit).where(GuardrailLimit.scope == scope, GuardrailLimit.window == name)
                )
                if limit is not None:
                    session.add(
                        GuardrailLimit(scope=scope, window=name, seconds=window_seconds(name), limit=limit)
                    )
        return await self.limits(scope)

    async def spend(
        self, principal: Principal, amount: Decimal, *, record: bool, idempotency_key: str | None = None
    ) -> SpendDecision:
        """Check (and with ``record``, record) ``amount`` against every window of the caller in one atomic
        step; raises ``SpendingLimit`` naming each violated window."""
        scopes = await self.scopes(principal)
        if not scopes:
            return SpendDecision(allowed=True, totals=[], violations=[], duplicate=False)
        decision = await self._store.spend(
            scopes, amount, record=record, idempotency_key=idempotency_key, now=self._clock()
        )
        spent = {"amount": float(amount), "reference": idempotency_key}
        if not decision.allowed:
            for v in decision.violations:
                self._telemetry.spend_refusals.labels(v.name).inc()
            if record:
                violations = [window_view(v) for v in decision.violations]
                await self._announce(principal, "spend.refused", {**spent, "violations": violations})
            first = decision.violations[0]
            raise SpendingLimit(
                f"spending {amount:.2f} would exceed the {first.name} limit of {first.limit:.2f} "
                f"({first.spent - amount:.2f} spent); it frees up in {first.resets_in_s} s",
                [window_view(v) for v in decision.violations],
                float(first.spent - amount),
            )
        if record and not decision.duplicate:
            self._telemetry.spend_recorded.inc(float(amount))
            windows = [window_view(t) for t in decision.totals]
            await self._announce(principal, "spend.recorded", {**spent, "windows": windows})
        ratios = [1 - t.spent / t.limit for t in decision.totals if t.limit > 0]
        if ratios:
            self._telemetry.spend_remaining.observe(max(float(min(ratios)), 0.0))
        return decision

    async def cancel(self, principal: Principal, idempotency_key: str) -> None:
        """Take back a recorded spend whose action did not happen (a rent that failed)."""
        await self._store.cancel([s for s, _ in await self.scopes(principal)], idempotency_key)
        await self._announce(principal, "spend.cancelled", {"reference": idempotency_key})

    async def _announce(self, principal: Principal, kind: str, data: dict[str, Any]) -> None:
        """Tell the user (on the ``spending`` stream) what happened, and through which API key."""
        data = {**data, "api_key_id": principal.api_key_id}
        await self._events.publish(Event("spending", kind, data, principal.user_id))

    async def totals(self, user_id: str) -> list[WindowTotal]:
        scope = user_scope(user_id)
        return await self._store.totals(scope, await self.limits(scope), self._clock())

    async def reset(self, user_id: str, window: str | None) -> None:
        if window is not None and window not in {w.name for w in await self.limits(user_scope(user_id))}:
            raise ValidationFailed(f"you have no '{window}' window")
        await self._store.reset(user_scope(user_id), window, self._clock())
