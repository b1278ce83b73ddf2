"""GPU selection preferences, one row per user.

Revision ID: 0002_gpu_preferences
Revises: 0001_accounts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0002_gpu_preferences"
down_revision = "0001_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_preferences",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("preferred_vendors", sa.JSON, nullable=False),
        sa.Column("preferred_tiers", sa.JSON, nullable=False),
        sa.Column("min_vram", sa.Integer, nullable=False),
        sa.Column("max_price_per_hour", sa.Numeric(12, 4)),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gpu_preferences")
