"""Tables behind spending guardrails: one lock row per scope, every recorded spend, and window resets.

Times in ``at`` and ``reset_at`` are epoch seconds on the spend store's clock (the ``now`` its callers pass),
not database timestamps, so the SQL and Redis stores count the same spends for the same ``now``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Float, Index, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.models import Base, UtcDateTime, new_id, utcnow


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
