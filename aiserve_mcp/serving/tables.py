"""Tables of model serving: uploaded models, the upload log that quotas count, and upload links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.tables import Base, UtcDateTime, new_id, utcnow


class ServedModel(Base):
    """A user's model file and what is known about it. ``status``: loading, ready, failed (the file
    cannot be loaded), or stored (kept, but this server cannot serve its format: ``status_reason``)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(32))
    variant: Mapped[str | None] = mapped_column(String(32))
    framework: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    gpu_required: Mapped[bool] = mapped_column(Boolean, default=False)
    gpu_type: Mapped[str | None] = mapped_column(String(64))
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_batch_size: Mapped[int | None] = mapped_column(Integer)  # None: the server's AISERVE_MODEL_MAX_BATCH
    max_queue_delay_ms: Mapped[float] = mapped_column(Float, default=0.0)  # 0: greedy, never waits
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ModelUpload(Base):
    """One accepted upload, kept after the model is deleted so upload rates stay honest."""

    __tablename__ = "model_uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class ModelUploadLink(Base):
    """A one-time upload link: the first ``PUT`` to its URL before ``expires_at`` spends it (``used_at``)
    and stores a model of ``size_bytes`` bytes for ``user_id`` with ``fields`` (the upload settings). Only
    the SHA-256 of the link's secret is kept."""

    __tablename__ = "model_upload_links"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
