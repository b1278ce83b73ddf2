"""Checkout Sessions as Stripe keeps them, and the test-only ways a payer finishes one.

* The object (docs.stripe.com/api/checkout/sessions/object; the pinned SDK's ``checkout.Session``):
  ``id`` ``cs_test_...``, ``object`` ``checkout.session``, ``status`` ``open``/``complete``/``expired``,
  ``payment_status`` ``unpaid``/``paid``, ``amount_subtotal``/``amount_total``, ``currency``,
  ``expires_at`` (24 hours after creation by default), ``metadata``, ``client_reference_id``, ``mode``,
  ``ui_mode`` ``hosted_page``, ``url`` on ``checkout.stripe.com`` while the session is open and ``null``
  after ("only present when the session is active"), and ``payment_intent`` ``null`` until the payer
  pays (PaymentIntents are made when the session is confirmed since 2022-08-01,
  docs.stripe.com/changelog/2022-08-01/deferred-paymentintent-checkout-session).
* Expiring (docs.stripe.com/api/checkout/sessions/expire): only an ``open`` session; otherwise 400 "Only
  Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of
  `expired`." (live text in Sylius/PayumStripePlugin#70). Stripe then sends ``checkout.session.expired``.
* Paying, which only the payer can do on Stripe's page: ``pay_session`` completes an open session and
  sends ``checkout.session.completed``, ``paid``, or ``unpaid`` for a payment method that settles later,
  which ``settle_async_payment`` ends with ``checkout.session.async_payment_succeeded`` or
  ``..._failed`` (docs.stripe.com/checkout/fulfillment).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.fakes.stripe_api.checkout_params import check_session, refused
from tests.fakes.stripe_api.events import deliver, stripe_event
from tests.fakes.stripe_api.params import invalid
from tests.fakes.stripe_api.state import StripeState, new_id

DEFAULT_LIFETIME_S = 24 * 3600


def create_session(params: dict[str, Any], state: StripeState) -> tuple[int, dict[str, Any], bool]:
    """Stripe's create-Checkout-Session semantics for one-time ``price_data`` line items; returns
    (status, body, executed) as ``intents.create_intent`` does."""
    now = int(time.time())
    checked = check_session(params, now)
    if refused(checked):
        return (*checked, False)
    total, currency = checked
    session_id = new_id("cs_test")
    session: dict[str, Any] = {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": total,
        "amount_total": total,
        "cancel_url": params.get("cancel_url"),
        "client_reference_id": params.get("client_reference_id"),
        "created": now,
        "currency": currency,
        "customer": None,
        "customer_email": params.get("customer_email"),
        "expires_at": int(params.get("expires_at") or now + DEFAULT_LIFETIME_S),
        "livemode": False,
        "metadata": params.get("metadata") or {},
        "mode": "payment",
        "payment_intent": None,
        "payment_status": "unpaid",
        "status": "open",
        "success_url": params.get("success_url"),
        "ui_mode": "hosted_page",
        "url": f"https://checkout.stripe.com/c/pay/{session_id}",
    }
    state.sessions[session_id] = session
    return 200, session, True


async def expire_session(state: StripeState, session: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Expire ``session`` (open only) and announce it, as ``POST .../expire`` does."""
    if session["status"] != "open":
        return invalid(
            'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a '
            f"status of `{session['status']}`.",
            "session",
        )
    session.update(status="expired", url=None)
    await deliver(state, stripe_event(session, "checkout.session.expired"))
    return 200, session


async def pay_session(
    state: StripeState, session_id: str, *, settles_later: bool = False
) -> httpx.Response | None:
    """The payer pays the open session ``session_id`` on Stripe's page: it completes, ``paid`` (or
    ``unpaid`` with ``settles_later``), and ``checkout.session.completed`` goes to the webhook endpoint."""
    session = state.sessions[session_id]
    if session["status"] != "open":
        raise ValueError(f"{session_id} is {session['status']}, not open")
    session.update(
        status="complete",
        payment_status="unpaid" if settles_later else "paid",
        payment_intent=new_id("pi"),
        url=None,
    )
    return await deliver(state, stripe_event(session, "checkout.session.completed"))


async def settle_async_payment(
    state: StripeState, session_id: str, *, succeeded: bool
) -> httpx.Response | None:
    """The bank settles a ``settles_later`` payment: ``async_payment_succeeded`` (``paid``) or ``_failed``."""
    session = state.sessions[session_id]
    if (session["status"], session["payment_status"]) != ("complete", "unpaid"):
        raise ValueError(f"{session_id} has no payment waiting to settle")
    if succeeded:
        session["payment_status"] = "paid"
    kind = "succeeded" if succeeded else "failed"
    return await deliver(state, stripe_event(session, f"checkout.session.async_payment_{kind}"))
