"""What the fake knows and how it misbehaves.

Knobs on ``StripeState``: ``fail_next`` (that many requests get 500 ``api_error``, answered in front of the
idempotency layer so a retry with the same key is processed), ``delay_s`` (every answer is that late),
``complete``/``fail_authentication`` (finish a 3-D Secure challenge), ``requests`` (what was asked), and
the webhook endpoint events go to (``webhook_url`` signed with ``webhook_secret``, through
``webhook_transport`` when the receiving app runs in process; ``deliveries`` lists what was sent).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx

API_KEY = "sk_test_fake51AiserveTestKey0000000000000000"


@dataclass
class RecordedRequest:
    """One request as the fake saw it (``params`` flattened exactly as sent, e.g. ``metadata[user]``)."""

    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None
    status_code: int = 0
    replayed: bool = False


@dataclass
class StripeState:
    """What the fake knows and how it misbehaves; tests read and change it directly."""

    api_key: str = API_KEY
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    fail_next: int = 0
    delay_s: float = 0.0
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_transport: httpx.AsyncBaseTransport | None = None
    deliveries: list[tuple[str, int]] = field(default_factory=list)  # (event type, HTTP status)

    @property
    def created(self) -> list[dict[str, Any]]:
        """The PaymentIntents created, oldest first."""
        return list(self.intents.values())

    def complete(self, pi_id: str) -> dict[str, Any]:
        """Move a ``requires_action`` or ``processing`` intent to ``succeeded`` (3-D Secure passed)."""
        intent = self.intents[pi_id]
        if intent["status"] not in ("requires_action", "processing"):
            raise ValueError(f"{pi_id} is {intent['status']}, not waiting")
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            next_action=None,
            latest_charge=new_id("ch"),
        )
        return intent

    def fail_authentication(self, pi_id: str) -> dict[str, Any]:
        """Move a ``requires_action`` intent back to ``requires_payment_method`` (3-D Secure failed)."""
        intent = self.intents[pi_id]
        if intent["status"] != "requires_action":
            raise ValueError(f"{pi_id} is {intent['status']}, not requires_action")
        intent.update(
            status="requires_payment_method",
            next_action=None,
            last_payment_error={
                "type": "invalid_request_error",
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication. You can provide "
                "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                "payment_method": payment_method_object(intent["payment_method"]),
            },
        )
        return intent


def new_id(prefix: str) -> str:
    """A fresh Stripe-style object id (``pi_...``, ``ch_...``)."""
    return f"{prefix}_{secrets.token_urlsafe(18).replace('-', 'A').replace('_', 'B')}"


def payment_method_object(pm: str | None) -> dict[str, Any]:
    """The card PaymentMethod object Stripe embeds in errors."""
    return {"id": pm, "object": "payment_method", "type": "card", "livemode": False}
