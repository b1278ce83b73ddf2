"""What every payment gateway is: the ``PaymentGateway`` protocol, its ``Charge``, ``CheckoutSession`` and
``WebhookEvent``, and the checks a charge passes before any call.

Every gateway (Stripe, the sandbox) takes one payment in one call (``charge``), looks it up again
(``retrieve``), opens a hosted payment page for a person to pay on (``create_checkout_session``) and
verifies and reads Stripe-style webhooks (``parse_webhook``). A declined card is not an exception: it is a
``Charge`` with status ``"failed"`` so the ledger can record it. Everything else that goes wrong raises:

* the gateway is unreachable, answers 5xx or is rate limiting us -> ``UpstreamFailed`` (``UpstreamTimeout``
  when it did not answer in time);
* the API key is wrong or lacks permissions -> ``ServiceUnavailable`` ("payments are misconfigured");
* the request itself is wrong (unknown payment method, bad amount) -> ``ValidationFailed``; so is an amount
  under Stripe's minimum charge for its currency (50 cents for USD), refused before any call;
* an idempotency key reused with different payment details -> ``Conflict``;
* ``retrieve`` of an unknown payment -> ``NotFound``.

No message carries the API key or the webhook secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from aiserve_mcp.core.errors import ValidationFailed

PaymentStatus = Literal["succeeded", "processing", "requires_action", "failed"]
CheckoutStatus = Literal["open", "complete", "expired"]
CheckoutPaymentStatus = Literal["paid", "unpaid", "no_payment_required"]

GENERIC_DECLINE_MESSAGE = "The payment was declined."


@dataclass(frozen=True)
class Charge:
    """The state of one payment as the gateway reports it.

    ``amount_minor`` is the PaymentIntent's ``amount`` (what the payment is for, in minor units); only a
    ``"succeeded"`` charge means the money was taken. ``failure_code``/``failure_message`` are set on
    ``"failed"``; ``next_action_url`` is the 3-D Secure page the payer must visit on ``"requires_action"``
    (``None`` when the gateway offers no redirect).
    """

    status: PaymentStatus
    provider_ref: str
    amount_minor: int
    currency: str
    failure_code: str | None = None
    failure_message: str | None = None
    next_action_url: str | None = None


@dataclass(frozen=True)
class CheckoutSession:
    """A hosted payment page (a Stripe Checkout Session in ``payment`` mode) as the gateway reports it.

    ``url`` is where the payer goes; it is ``None`` once the session is no longer ``"open"``.
    ``payment_status`` is ``"paid"`` once the money is taken; a ``"complete"`` session can still be
    ``"unpaid"`` when the payer chose a payment method that settles later (a bank debit, say).
    ``amount_minor`` is ``amount_total``; ``expires_at`` is in epoch seconds; ``user_id`` is the user the
    session was opened for (its ``metadata[user_id]``, else its ``client_reference_id``).
    """

    id: str
    url: str | None
    status: CheckoutStatus
    payment_status: CheckoutPaymentStatus
    amount_minor: int
    currency: str
    expires_at: int
    user_id: str | None
    success_url: str | None = None
    cancel_url: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook event.

    ``provider_ref``, ``amount_minor`` and ``currency`` are set when the event's object is a PaymentIntent
    or a Checkout Session (then ``provider_ref`` is the session's id and ``checkout`` the session); ``status``
    only for the event types that settle a payment (succeeded, processing, requires_action, payment_failed,
    canceled -> failed; for Checkout see ``webhooks``). ``failure_code``/``failure_message`` come from the
    intent's ``last_payment_error`` on failure events.
    """

    id: str
    type: str
    provider_ref: str | None
    status: PaymentStatus | None
    amount_minor: int | None
    currency: str | None
    failure_code: str | None = None
    failure_message: str | None = None
    checkout: CheckoutSession | None = None


class PaymentGateway(Protocol):
    """What the ledger needs from a payment provider."""

    name: str

    async def charge(
        self,
        *,
        amount_minor: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        description: str,
        metadata: Mapping[str, str],
    ) -> Charge: ...

    async def retrieve(self, provider_ref: str) -> Charge: ...

    async def create_checkout_session(
        self,
        *,
        amount_minor: int,
        currency: str,
        user_id: str,
        customer_email: str | None,
        product_name: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> CheckoutSession: ...

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent: ...

    async def aclose(self) -> None: ...


MAXIMUM_PURCHASE_USD = 100_000  # the most one payment or checkout session adds to a balance

# Stripe's minimum charge amounts in minor units (docs.stripe.com/currencies#minimum-and-maximum-charge-
# amounts): below them Stripe answers 400 amount_too_small ("Amount must be at least $0.50 usd").
MINIMUM_CHARGE_MINOR: dict[str, int] = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500, "dkk": 250,
    "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50, "mxn": 1000, "myr": 200,
    "nok": 300, "nzd": 50, "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}  # fmt: skip
_ZERO_DECIMAL = frozenset({"jpy"})  # of the currencies above, those without minor units


def check_charge_args(amount_minor: int, currency: str, idempotency_key: str) -> str:
    """Refuse a charge Stripe would refuse before any call; return the lower-case currency code."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValidationFailed("the amount must be a positive whole number of minor units")
    code = currency.strip().lower()
    if len(code) != 3 or not code.isalpha():
        raise ValidationFailed("the currency must be a three-letter ISO code", {"currency": currency})
    minimum = MINIMUM_CHARGE_MINOR.get(code)
    if minimum is not None and amount_minor < minimum:
        shown = str(minimum) if code in _ZERO_DECIMAL else f"{minimum // 100}.{minimum % 100:02d}"
        raise ValidationFailed(
            f"the amount is below the card payment minimum of {shown} {code.upper()}",
            {"minimum": shown, "currency": code.upper()},
        )
    if not idempotency_key or len(idempotency_key) > 255:
        raise ValidationFailed("the idempotency key must be 1 to 255 characters")
    return code
