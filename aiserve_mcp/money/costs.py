"""The gate every money-moving action passes: spending guardrails first, then a hold on credits.

``authorize`` records the committed cost against the caller's spending windows (atomically, keyed by the
action's reference so a retry counts once) and holds it from their credits; if the credits cannot cover
it, the spend is taken back. ``abandon`` undoes both for an action that did not happen (nothing is
charged); ``settle`` charges what was actually used, never more than held, and returns the rest.
Spending windows count what an action commits to when it starts (an instance's price x its hours).
"""

from __future__ import annotations

from decimal import Decimal

from aiserve_mcp.core.principal import Principal
from aiserve_mcp.money.guardrails import Guardrails
from aiserve_mcp.money.ledger import Ledger


class CostGate:
    def __init__(self, ledger: Ledger, guardrails: Guardrails) -> None:
        self.ledger = ledger
        self.guardrails = guardrails

    async def authorize(
        self,
        payer: Principal,
        amount: Decimal,
        reference: str,
        description: str,
        spend_key: str | None = None,
    ) -> None:
        """Raise ``SpendingLimit`` or ``InsufficientCredits`` unless ``amount`` may be spent now. The spend
        is recorded under ``spend_key`` (default: ``reference``), the hold under ``reference``."""
        if amount <= 0:
            return  # free (this host's workers at the default price): nothing to limit or hold
        key = spend_key or reference
        await self.guardrails.spend(payer, amount, record=True, idempotency_key=key)
        try:
            await self.ledger.hold(payer.user_id, amount, reference, description)
        except Exception:  # refused, or the database is down: the spend must not stay counted
            await self.guardrails.cancel(payer, key)
            raise

    async def abandon(self, payer: Principal, reference: str) -> None:
        """The action did not happen: release the hold in full and take back the spend."""
        hold = await self.ledger.open_hold(reference)
        if hold is not None:
            await self.ledger.settle_hold(hold.id, Decimal(0), "released: the action did not happen")
        await self.guardrails.cancel(payer, reference)

    async def settle(self, reference: str, actual: Decimal, description: str) -> Decimal:
        """Charge ``actual`` against the hold of ``reference``; returns what was charged (0 without one)."""
        hold = await self.ledger.open_hold(reference)
        if hold is None:
            return Decimal(0)
        settled = await self.ledger.settle_hold(hold.id, actual, description)
        return settled.captured
