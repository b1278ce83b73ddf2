"""Approval webhooks: each user may name one URL that receives every new approval of theirs, signed the way
Stripe signs its webhooks. This module keeps each user's endpoint and signs bodies; checking URLs and
delivering is ``traffic.approval_webhooks``'s part (it knows the egress rules).

The signing secret is made when the URL is set and shown to its owner once; it is kept as is (a signature
is an HMAC under it), so whoever reads the database could forge a notification, never act on an approval.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import delete, update

from aiserve_mcp.money.tables import ApprovalWebhook
from aiserve_mcp.storage.database import Database

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
SIGNATURE_HEADER: Final = "Aiserve-Signature"
EVENT_HEADER: Final = "Aiserve-Event"


def signature(secret: str, body: bytes, at: int) -> str:
    """The ``Aiserve-Signature`` header of ``body`` sent at ``at`` (Unix seconds):
    ``t=<at>,v1=<hex HMAC-SHA256 of "<at>.<body>" keyed by the secret's UTF-8 bytes>``, as Stripe-Signature
    is made (so Stripe's own verifiers accept it)."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


@dataclass(frozen=True)
class WebhookEndpoint:
    """A user's approval webhook, and the outcome of its last delivery (``None`` before the first)."""

    url: str
    secret: str
    created_at: datetime
    last_attempt_at: datetime | None
    last_outcome: str | None


def _endpoint(row: ApprovalWebhook) -> WebhookEndpoint:
    return WebhookEndpoint(row.url, row.secret, row.created_at, row.last_attempt_at, row.last_outcome)


class ApprovalWebhookStore:
    """One approval webhook per user."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str) -> WebhookEndpoint | None:
        async with self._db.session() as session:
            row = await session.get(ApprovalWebhook, user_id)
        return _endpoint(row) if row is not None else None

    async def replace(self, user_id: str, url: str) -> WebhookEndpoint:
        """Make ``url`` the user's webhook with a new signing secret (the old secret stops being used)."""
        fresh = ApprovalWebhook(
            user_id=user_id,
            url=url,
            secret=SECRET_PREFIX + secrets.token_urlsafe(32),
            created_at=datetime.now(UTC),
        )
        async with self._db.session() as session:
            await session.execute(delete(ApprovalWebhook).where(ApprovalWebhook.user_id == user_id))
            session.add(fresh)
        return _endpoint(fresh)

    async def remove(self, user_id: str) -> bool:
        """Stop sending the user's approvals anywhere; whether a webhook was set."""
        async with self._db.session() as session:
            removed = await session.execute(delete(ApprovalWebhook).where(ApprovalWebhook.user_id == user_id))
        return bool(removed.rowcount)  # type: ignore[attr-defined]

    async def record(self, user_id: str, secret: str, outcome: str) -> None:
        """Note how a delivery went, unless the webhook was replaced (or removed) since it started."""
        async with self._db.session() as session:
            await session.execute(
                update(ApprovalWebhook)
                .where(ApprovalWebhook.user_id == user_id, ApprovalWebhook.secret == secret)
                .values(last_attempt_at=datetime.now(UTC), last_outcome=outcome[:300])
            )
