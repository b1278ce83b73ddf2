"""Tables of traffic: each user's load-balancing pool."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.tables import Base, UtcDateTime, utcnow


class LbPool(Base):
    """A user's named pool of instances and the strategy that balances traffic over it."""

    __tablename__ = "lb_pools"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
