"""Reading a Stripe PaymentIntent (as a plain dict): its outcome as a ``Charge`` and its last failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiserve_mcp.core.errors import UpstreamFailed
from aiserve_mcp.money.payments.base import GENERIC_DECLINE_MESSAGE, Charge, PaymentStatus


def failure_of(intent: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(code, message)`` of the intent's ``last_payment_error``, each ``None`` when absent."""
    error = intent.get("last_payment_error")
    if not isinstance(error, Mapping):
        return None, None
    code = error.get("code")
    message = error.get("message")
    return (code if isinstance(code, str) else None, message if isinstance(message, str) else None)


def _next_action_url(intent: Mapping[str, Any]) -> str | None:
    action = intent.get("next_action")
    if not isinstance(action, Mapping):
        return None
    redirect = action.get("redirect_to_url")
    if not isinstance(redirect, Mapping):
        return None
    url = redirect.get("url")
    return url if isinstance(url, str) else None


def charge_from_intent(intent: Mapping[str, Any]) -> Charge:
    """Map a PaymentIntent (as a plain dict) to a ``Charge``.

    succeeded -> succeeded; processing and requires_capture -> processing; requires_action and
    requires_confirmation -> requires_action; requires_payment_method after a failed attempt (it has a
    ``last_payment_error``) and canceled -> failed; requires_payment_method with no attempt yet ->
    requires_action.
    """
    status = intent.get("status")
    code, message = failure_of(intent)
    mapped: PaymentStatus
    if status == "succeeded":
        mapped = "succeeded"
    elif status in ("processing", "requires_capture"):
        mapped = "processing"
    elif status == "canceled":
        mapped = "failed"
        reason = intent.get("cancellation_reason")
        code = code or "canceled"
        message = message or ("The payment was canceled" + (f" ({reason})." if reason else "."))
    elif status == "requires_payment_method" and code is not None:
        mapped = "failed"
    elif status in ("requires_action", "requires_confirmation", "requires_payment_method"):
        mapped = "requires_action"
    else:
        raise UpstreamFailed(
            "the payment gateway answered with an unknown payment status", {"status": status}
        )
    if mapped == "failed" and message is None:
        message = GENERIC_DECLINE_MESSAGE
    return Charge(
        status=mapped,
        provider_ref=str(intent.get("id") or ""),
        amount_minor=int(intent.get("amount") or 0),
        currency=str(intent.get("currency") or "").lower(),
        failure_code=code if mapped == "failed" else None,
        failure_message=message if mapped == "failed" else None,
        next_action_url=_next_action_url(intent) if mapped == "requires_action" else None,
    )
