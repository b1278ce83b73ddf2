"""Credits bought on a hosted payment page (a Checkout Session): the payment recorded when the page opens,
and the gateway's verdict on it applied exactly once.

Both go through the ledger's payment record, keyed on the session (``checkout_key``): opening records it
as ``requires_action`` (waiting for the payer), and each verdict (a webhook, or the sandbox's Pay button)
records it if it is missing and then settles it, so that replays, concurrent deliveries and a verdict that
overtakes the opening all credit the user once.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.exc import IntegrityError

from aiserve_mcp.core.errors import NotFound, ValidationFailed
from aiserve_mcp.money.ledger import Ledger
from aiserve_mcp.money.payments.base import (
    MAXIMUM_PURCHASE_USD,
    MINIMUM_CHARGE_MINOR,
    CheckoutSession,
    PaymentStatus,
)
from aiserve_mcp.money.tables import LedgerTransaction

_SANDBOX_NOTE = " (sandbox: no money moved)"


CHECKOUT_KEY_PREFIX = "checkout:"  # a payment's own idempotency key may not start so


def checkout_key(session_id: str) -> str:
    """The ledger's idempotency key for the payment of Checkout Session ``session_id``."""
    return f"{CHECKOUT_KEY_PREFIX}{session_id}"


def _credits(session: CheckoutSession) -> tuple[str, Decimal]:
    """The user and the USD amount ``session`` buys: ``ValidationFailed`` when it buys nothing a payment
    may add (another currency, an amount outside the payment limits), ``NotFound`` when it names no user."""
    low, high = MINIMUM_CHARGE_MINOR["usd"], MAXIMUM_PURCHASE_USD * 100
    if session.currency != "usd" or not low <= session.amount_minor <= high:
        raise ValidationFailed(
            "the checkout session's amount is not one credits can be bought for",
            {"amount_minor": session.amount_minor, "currency": session.currency},
        )
    if not session.user_id:
        raise NotFound("the checkout session names no user", {"checkout_session_id": session.id})
    return session.user_id, Decimal(session.amount_minor) / 100


async def _record(
    ledger: Ledger, gateway: str, session: CheckoutSession, status: PaymentStatus, failure: str | None
) -> LedgerTransaction:
    user_id, amount = _credits(session)
    try:
        tx = await ledger.payment(
            user_id,
            amount,
            currency="USD",
            gateway=gateway,
            provider_ref=session.id,
            status=status,
            idempotency_key=checkout_key(session.id),
            description="credits, checkout page" + (_SANDBOX_NOTE if gateway == "sandbox" else ""),
            failure=failure,
        )
    except IntegrityError:  # the user does not exist here: a session another server opened
        raise NotFound("the checkout session's user is not a user of this server") from None
    if tx.provider_ref != session.id or tx.amount != amount:
        raise ValidationFailed(
            "the checkout session differs from the payment recorded for it",
            {"transaction_id": tx.id, "recorded": float(tx.amount), "session": float(amount)},
        )
    return tx


async def open_checkout(ledger: Ledger, gateway: str, session: CheckoutSession) -> LedgerTransaction:
    """Record the payment of a session just opened, ``requires_action`` until the payer pays."""
    return await _record(ledger, gateway, session, "requires_action", None)


async def settle_checkout(
    ledger: Ledger,
    gateway: str,
    session: CheckoutSession,
    status: PaymentStatus,
    failure: str | None = None,
) -> LedgerTransaction:
    """Apply the gateway's verdict on ``session``'s payment: ``succeeded`` credits its user once, however
    often and concurrently it arrives; ``processing`` waits (a payment method that settles later);
    ``failed`` ends it. A payment already succeeded or failed stays as it is. ``NotFound`` when the session
    is not for a user of this server."""
    tx = await _record(ledger, gateway, session, status, failure)
    if tx.status == status:
        return tx
    return await ledger.settle_payment(session.id, status, failure)
