"""Tables of the GPU market: each user's preferences and the contracts (rented instances)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.tables import Base, UtcDateTime, new_id, utcnow


class GpuPreference(Base):
    """A user's GPU selection preferences (one row per user, replaced on every save)."""

    __tablename__ = "gpu_preferences"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    preferred_vendors: Mapped[list[str]] = mapped_column(JSON)
    preferred_tiers: Mapped[list[str]] = mapped_column(JSON)
    min_vram: Mapped[int] = mapped_column(Integer)
    max_price_per_hour: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    priority: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class GpuContract(Base):
    """One GPU instance a user rented: who owns it, what it costs, and its last known state.

    ``status`` is provisioning, running, failed or destroyed; ``expires_at`` is when the rented duration
    ends (prepaid providers stop then; metered ones are destroyed then unless ``auto_renew``).
    ``worker_answered_at`` is when its worker, at its current endpoint, first answered an authenticated
    health check: until then no traffic is routed to it.
    """

    __tablename__ = "gpu_contracts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(36))  # the key it was rented with (its budget)
    grant_id: Mapped[str | None] = mapped_column(String(36))  # or the connected app's grant (its budget)
    provider: Mapped[str] = mapped_column(String(32))
    offer_id: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[str | None] = mapped_column(String(128))
    gpu_model: Mapped[str] = mapped_column(String(128))
    pool: Mapped[str] = mapped_column(String(64), default="default")
    num_gpus: Mapped[int] = mapped_column(Integer)
    vram_gb: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(String(128))
    price_per_hour: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    billing: Mapped[str] = mapped_column(String(16))
    duration_hours: Mapped[int] = mapped_column(Integer)
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_message: Mapped[str | None] = mapped_column(String(500))
    endpoint: Mapped[str | None] = mapped_column(String(300))
    access_token: Mapped[str | None] = mapped_column(String(200))
    worker_answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    destroyed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    @property
    def estimated_cost(self) -> Decimal:
        """USD for the rented duration: price_per_hour x duration_hours."""
        return Decimal(self.price_per_hour) * self.duration_hours
