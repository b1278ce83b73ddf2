"""Webhooks as Stripe sends them: ``payment_intent_event`` builds an event body, ``signed_event`` forges its
``Stripe-Signature`` header."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from tests.fakes.stripe_api.state import new_id


def payment_intent_event(
    intent: dict[str, Any], event_type: str, event_id: str | None = None
) -> dict[str, Any]:
    """A Stripe event of ``event_type`` whose ``data.object`` is a copy of ``intent``."""
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": json.loads(json.dumps(intent))},
    }


def signed_event(secret: str, event: dict[str, Any], timestamp: int | None = None) -> tuple[bytes, str]:
    """``event`` as a webhook body and a valid ``Stripe-Signature`` header for it, signed at ``timestamp``.

    The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by secret>``, as Stripe sends.
    """
    payload = json.dumps(event, separators=(",", ":")).encode()
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={mac}"
