"""Creating and confirming a PaymentIntent as Stripe does for its test cards.

* ``confirm=true`` with neither ``payment_method`` nor ``payment_method_data`` is 400
  ``payment_intent_unexpected_state`` "You cannot confirm this PaymentIntent because it's missing a payment
  method. ..." with ``error.payment_intent`` (the intent is created, in ``requires_payment_method``).
* Stripe's test cards (docs.stripe.com/testing): ``pm_card_visa``, ``pm_card_visa_debit``,
  ``pm_card_mastercard``, ``pm_card_amex`` and ``tok_visa``, ``tok_visa_debit``, ``tok_mastercard``,
  ``tok_amex`` succeed; ``pm_card_chargeDeclined``, ``pm_card_visa_chargeDeclined``,
  ``tok_chargeDeclined``, ``tok_visa_chargeDeclined`` are a 402 ``card_error`` ``card_declined``
  (``decline_code`` ``generic_decline``, "Your card was declined."), the ``...InsufficientFunds`` ones
  likewise with ``insufficient_funds`` ("Your card has insufficient funds."), ``...ExpiredCard`` with
  ``expired_card``; the error carries ``payment_intent``, ``payment_method``, ``charge`` and ``doc_url``
  (docs.stripe.com/api/errors). ``pm_card_threeDSecure2Required``, ``pm_card_threeDSecureRequired``,
  ``pm_card_authenticationRequired`` and their ``tok_`` twins answer 200 ``requires_action`` with
  ``next_action.redirect_to_url`` ``{url, return_url}`` when a ``return_url`` was sent
  (``use_stripe_sdk`` otherwise).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from tests.fakes.stripe_api.params import check_amount, check_currency, invalid, payment_method_of
from tests.fakes.stripe_api.state import StripeState, new_id, payment_method_object


def create_intent(params: dict[str, Any], state: StripeState) -> tuple[int, dict[str, Any], bool]:
    """Stripe's create-PaymentIntent semantics for card test payment methods.

    Returns (status, body, executed): ``executed`` is false when the parameters were refused before any
    object was made, and Stripe's idempotency layer then stores nothing.
    """
    amount = check_amount(params)
    if isinstance(amount, tuple):
        return (*amount, False)
    currency = check_currency(params, amount)
    if isinstance(currency, tuple):
        return (*currency, False)
    found = payment_method_of(params)
    if isinstance(found[0], int):
        return (found[0], found[1], False)
    pm, outcome = found
    confirm = params.get("confirm") == "true"
    pi_id = new_id("pi")
    types = params.get("allowed_payment_method_types") or params.get("payment_method_types") or ["card"]
    intent: dict[str, Any] = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": 0,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{pi_id}_secret_{secrets.token_urlsafe(18)}",
        "confirmation_method": "automatic",
        "created": int(time.time()),
        "currency": currency,
        "customer": None,
        "description": params.get("description"),
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": params.get("metadata") or {},
        "next_action": None,
        "payment_method": pm,
        "payment_method_types": list(types),
        "status": "requires_payment_method" if pm is None else "requires_confirmation",
    }
    state.intents[pi_id] = intent
    if not confirm:
        return 200, intent, True
    if pm is None:
        status, body = invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method. You can either "
            "update the PaymentIntent with a payment method and then confirm it again, or confirm it again "
            "directly with a payment method.",
            "payment_method",
            "payment_intent_unexpected_state",
            payment_intent=intent,
        )
        return status, body, True
    if outcome == "succeeds":
        intent.update(status="succeeded", amount_received=amount, latest_charge=new_id("ch"))
        return 200, intent, True
    if outcome == "3ds":
        return 200, _needs_authentication(intent, params.get("return_url")), True
    assert isinstance(outcome, tuple)
    code, decline_code, message = outcome
    charge_id = new_id("ch")
    error = {
        "type": "card_error",
        "code": code,
        "decline_code": decline_code,
        "message": message,
        "charge": charge_id,
        "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
        "payment_method": payment_method_object(pm),
    }
    intent.update(status="requires_payment_method", latest_charge=charge_id, last_payment_error=dict(error))
    return 402, {"error": {**error, "payment_intent": intent}}, True


def _needs_authentication(intent: dict[str, Any], return_url: Any) -> dict[str, Any]:
    pi_id = intent["id"]
    if return_url:
        action: dict[str, Any] = {
            "type": "redirect_to_url",
            "redirect_to_url": {
                "return_url": return_url,
                "url": f"https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={pi_id}"
                f"&payment_intent_client_secret={intent['client_secret']}",
            },
        }
    else:
        action = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {"type": "stripe_3ds2_fingerprint", "three_d_secure_2_source": new_id("src")},
        }
    intent.update(status="requires_action", next_action=action)
    return intent
