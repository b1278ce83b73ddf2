"""GPU instances rented by users.

Revision ID: 0003_gpu_contracts
Revises: 0002_gpu_preferences
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0003_gpu_contracts"
down_revision = "0002_gpu_preferences"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_contracts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("offer_id", sa.String(128), nullable=False),
        sa.Column("instance_id", sa.String(128)),
        sa.Column("gpu_model", sa.String(128), nullable=False),
        sa.Column("num_gpus", sa.Integer, nullable=False),
        sa.Column("vram_gb", sa.Integer, nullable=False),
        sa.Column("location", sa.String(128), nullable=False),
        sa.Column("price_per_hour", sa.Numeric(12, 4), nullable=False),
        sa.Column("billing", sa.String(16), nullable=False),
        sa.Column("duration_hours", sa.Integer, nullable=False),
        sa.Column("auto_renew", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("status_message", sa.String(500)),
        sa.Column("endpoint", sa.String(300)),
        sa.Column("access_token", sa.String(200)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
        sa.Column("destroyed_at", UtcDateTime),
    )


def downgrade() -> None:
    op.drop_table("gpu_contracts")
