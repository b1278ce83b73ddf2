"""Tables of the credit ledger: accounts with their balances, immutable balanced entries, the
user-visible transactions that group them, holds, and the payment webhooks already handled.

Spending guardrails: one lock row per scope, every recorded spend, and window resets. Times in ``at``
and ``reset_at`` are epoch seconds on the spend store's clock (the ``now`` its callers pass), not database
timestamps, so the SQL and Redis stores count the same spends for the same ``now``.

Approvals: each scope's approval policy, and the calls waiting for (or carried out after) a decision."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.tables import Base, UtcDateTime, new_id, utcnow

MONEY = Numeric(18, 6)


class LedgerAccount(Base):
    """``user:<id>:available``, ``user:<id>:held``, or a platform account (``platform:payments``,
    ``platform:usage``). User accounts never go below zero."""

    __tablename__ = "ledger_accounts"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(36), index=True)
    balance: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class LedgerTransaction(Base):
    """What a user sees in their history: a payment, a hold, a charge, a release or a correction."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    status: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(String(300))
    reference: Mapped[str | None] = mapped_column(String(120), index=True)
    gateway: Mapped[str | None] = mapped_column(String(20))
    provider_ref: Mapped[str | None] = mapped_column(String(120), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    failure: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class LedgerEntry(Base):
    """One leg of a transaction; the legs of a posting sum to zero. Never updated or deleted."""

    __tablename__ = "ledger_entries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("ledger_accounts.id"), index=True)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class LedgerHold(Base):
    """Credits set aside for an action whose cost is known only afterwards."""

    __tablename__ = "ledger_holds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    captured: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    status: Mapped[str] = mapped_column(String(12))  # open, settled
    reference: Mapped[str] = mapped_column(String(120), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebhookEventSeen(Base):
    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class GuardrailLimit(Base):
    """A spending limit over one rolling window, for a user (``user:<id>``) or one API key (``key:<id>``)."""

    __tablename__ = "guardrail_limits"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    window: Mapped[str] = mapped_column(String(40), primary_key=True)
    seconds: Mapped[int] = mapped_column()
    limit: Mapped[Decimal] = mapped_column(MONEY)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ApprovalPolicy(Base):
    """When an action of ``scope`` (``user:<id>``, ``key:<api key id>``, ``grant:<oauth grant id>``) waits
    for its owner's approval: mode ``always``, or ``above`` a USD ``threshold`` per action. No row:
    ``never``."""

    __tablename__ = "approval_policies"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    mode: Mapped[str] = mapped_column(String(8))
    threshold: Mapped[Decimal | None] = mapped_column(MONEY)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class Approval(Base):
    """A money-moving call waiting for its owner's decision, then its outcome: ``status`` pending,
    executing, executed (``result``: the tool's output), failed (``error``: the error body), denied or
    expired. ``requested_by`` is the caller as it asked (how it authenticated, its credential, scopes)."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_user_created", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    description: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(12))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    requested_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class SpendScope(Base):
    """One row per scope (``user:<id>``, ``key:<api key id>``), locked while a spend is checked and
    recorded."""

    __tablename__ = "spend_scopes"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)


class SpendEvent(Base):
    """One recorded spend of one scope. The idempotency key is kept on the first scope's event only."""

    __tablename__ = "spend_events"
    __table_args__ = (
        UniqueConstraint("scope", "idempotency_key", name="uq_spend_events_scope_idempotency_key"),
        Index("ix_spend_events_scope_at", "scope", "at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(80))
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    at: Mapped[float] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SpendReset(Base):
    """Spends of ``scope`` made before ``reset_at`` no longer count in ``window`` (``*``: in every window)."""

    __tablename__ = "spend_resets"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    window: Mapped[str] = mapped_column(String(40), primary_key=True)
    reset_at: Mapped[float] = mapped_column(Float)


class ApprovalWebhook(Base):
    """Where a user's new approvals are POSTed, the secret their signature is made with, and how the last
    delivery went."""

    __tablename__ = "approval_webhooks"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_outcome: Mapped[str | None] = mapped_column(String(300))
