"""Uploaded models and the upload log.

Revision ID: 0007_models
Revises: 0006_ledger
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0007_models"
down_revision = "0006_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("variant", sa.String(32)),
        sa.Column("framework", sa.String(64)),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(500)),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("gpu_required", sa.Boolean, nullable=False),
        sa.Column("gpu_type", sa.String(64)),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("signature", sa.JSON),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "model_uploads",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("model_uploads")
    op.drop_table("models")
