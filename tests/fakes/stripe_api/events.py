"""Webhooks as Stripe sends them: ``stripe_event`` builds an event body, ``signed_event`` forges its
``Stripe-Signature`` header, ``deliver`` posts one to the state's webhook endpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from tests.fakes.stripe_api.state import StripeState, new_id


def stripe_event(obj: dict[str, Any], event_type: str, event_id: str | None = None) -> dict[str, Any]:
    """A Stripe event of ``event_type`` whose ``data.object`` is a copy of ``obj`` (a PaymentIntent, a
    Checkout Session)."""
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": json.loads(json.dumps(obj))},
    }


def signed_event(secret: str, event: dict[str, Any], timestamp: int | None = None) -> tuple[bytes, str]:
    """``event`` as a webhook body and a valid ``Stripe-Signature`` header for it, signed at ``timestamp``.

    The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by secret>``, as Stripe sends.
    """
    payload = json.dumps(event, separators=(",", ":")).encode()
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={mac}"


async def deliver(state: StripeState, event: dict[str, Any]) -> httpx.Response | None:
    """POST ``event``, signed, to ``state.webhook_url`` as Stripe does (``None`` when no endpoint is set)."""
    if state.webhook_url is None or state.webhook_secret is None:
        return None
    payload, header = signed_event(state.webhook_secret, event)
    async with httpx.AsyncClient(transport=state.webhook_transport, timeout=30) as http:
        answer = await http.post(
            state.webhook_url,
            content=payload,
            headers={"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header},
        )
    state.deliveries.append((event["type"], answer.status_code))
    return answer
