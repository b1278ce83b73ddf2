"""Reading a Stripe Checkout Session (as a plain dict) and what each ``checkout.session.*`` event settles.

The events (docs.stripe.com/checkout/fulfillment): ``checkout.session.completed`` when the payer finishes
the page; its session's ``payment_status`` is ``paid`` when the money is taken, or ``unpaid`` for a payment
method that settles later, which then ends in ``checkout.session.async_payment_succeeded`` or
``checkout.session.async_payment_failed``. ``checkout.session.expired`` ends a session nobody paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast, get_args

from aiserve_mcp.core.errors import UpstreamFailed
from aiserve_mcp.money.payments.base import (
    CheckoutPaymentStatus,
    CheckoutSession,
    CheckoutStatus,
    PaymentStatus,
)

Outcome = tuple[PaymentStatus, str | None, str | None]  # (status, failure code, failure message)

_COMPLETED: dict[str, Outcome] = {"paid": ("succeeded", None, None), "unpaid": ("processing", None, None)}
_SETTLED_BY: dict[str, Outcome] = {
    "checkout.session.async_payment_succeeded": ("succeeded", None, None),
    "checkout.session.async_payment_failed": (
        "failed",
        "async_payment_failed",
        "The payment method chosen on the checkout page failed to pay.",
    ),
    "checkout.session.expired": ("failed", "expired", "The checkout page expired before it was paid."),
}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def checkout_session_from(session: Mapping[str, Any]) -> CheckoutSession:
    """Map a Checkout Session (as a plain dict) to a ``CheckoutSession``."""
    status, paid = session.get("status"), session.get("payment_status")
    if status not in get_args(CheckoutStatus) or paid not in get_args(CheckoutPaymentStatus):
        raise UpstreamFailed(
            "the payment gateway answered with an unknown checkout status",
            {"status": status, "payment_status": paid},
        )
    metadata = session.get("metadata")
    owner = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    amount, expires = session.get("amount_total"), session.get("expires_at")
    return CheckoutSession(
        id=str(session.get("id") or ""),
        url=_text(session.get("url")),
        status=cast(CheckoutStatus, status),
        payment_status=cast(CheckoutPaymentStatus, paid),
        amount_minor=amount if isinstance(amount, int) else 0,
        currency=str(session.get("currency") or "").lower(),
        expires_at=expires if isinstance(expires, int) else 0,
        user_id=_text(owner) or _text(session.get("client_reference_id")),
        success_url=_text(session.get("success_url")),
        cancel_url=_text(session.get("cancel_url")),
    )


def checkout_outcome(event_type: str, session: CheckoutSession) -> Outcome | None:
    """What the event means for the payment, or ``None`` when it settles nothing."""
    if event_type == "checkout.session.completed":
        return _COMPLETED.get(session.payment_status)
    return _SETTLED_BY.get(event_type)
