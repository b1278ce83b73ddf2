"""Verifying a Stripe-style webhook's ``Stripe-Signature`` header and reading the event it carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stripe

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.money.payments.base import GENERIC_DECLINE_MESSAGE, PaymentStatus, WebhookEvent
from aiserve_mcp.money.payments.intents import failure_of
from aiserve_mcp.money.payments.sessions import checkout_outcome, checkout_session_from

WEBHOOK_TOLERANCE_S = 300

# Event types whose PaymentIntent snapshot settles the payment's state; other payment_intent.* events
# (created, amount_capturable_updated, partially_funded) carry no status.
_EVENT_STATUS: dict[str, PaymentStatus] = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.payment_failed": "failed",
    "payment_intent.canceled": "failed",
}


class WebhookRejected(ValidationFailed):
    """A webhook whose signature is missing, wrong or stale, or whose body is not a Stripe event."""


def verify_and_parse(payload: bytes, signature_header: str | None, secret: str | None) -> WebhookEvent:
    """Check ``signature_header`` (at most 300 s old) against ``payload`` with ``secret``; read the event."""
    if not secret:
        raise WebhookRejected("webhooks are not accepted: no webhook signing secret is configured")
    if not signature_header:
        raise WebhookRejected("the Stripe-Signature header is missing")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature_header, secret, tolerance=WEBHOOK_TOLERANCE_S
        )
        data = event.to_dict()
    except stripe.SignatureVerificationError as exc:
        text = str(exc)
        if "tolerance" in text:
            raise WebhookRejected("the webhook's signature timestamp is too old") from None
        if "extract timestamp" in text or "expected scheme" in text:
            raise WebhookRejected("the Stripe-Signature header is malformed") from None
        raise WebhookRejected("the webhook's signature does not match its body") from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise WebhookRejected("the webhook body is not a Stripe event") from None
    return _event_from_dict(data)


def _event_from_dict(data: Mapping[str, Any]) -> WebhookEvent:
    event_id, event_type = data.get("id"), data.get("type")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise WebhookRejected("the webhook body is not a Stripe event: it lacks an id or a type")
    body = data.get("data")
    obj = body.get("object") if isinstance(body, Mapping) else None
    if isinstance(obj, Mapping) and obj.get("object") == "checkout.session":
        return _checkout_event(event_id, event_type, obj)
    if not isinstance(obj, Mapping) or obj.get("object") != "payment_intent":
        return WebhookEvent(event_id, event_type, None, None, None, None)
    amount = obj.get("amount")
    currency = obj.get("currency")
    status = _EVENT_STATUS.get(event_type)
    code, message = failure_of(obj) if status == "failed" else (None, None)
    if status == "failed" and code is None and event_type == "payment_intent.canceled":
        code = "canceled"
    return WebhookEvent(
        id=event_id,
        type=event_type,
        provider_ref=str(obj.get("id")) if obj.get("id") else None,
        status=status,
        amount_minor=amount if isinstance(amount, int) else None,
        currency=currency.lower() if isinstance(currency, str) else None,
        failure_code=code,
        failure_message=(message or GENERIC_DECLINE_MESSAGE) if status == "failed" else None,
    )


def _checkout_event(event_id: str, event_type: str, obj: Mapping[str, Any]) -> WebhookEvent:
    session = checkout_session_from(obj)
    status, code, message = checkout_outcome(event_type, session) or (None, None, None)
    return WebhookEvent(
        id=event_id,
        type=event_type,
        provider_ref=session.id or None,
        status=status,
        amount_minor=session.amount_minor,
        currency=session.currency,
        failure_code=code,
        failure_message=message,
        checkout=session,
    )
