"""Instance pools: a pool name on each contract, and each user's balancing strategy per pool.

Revision ID: 0004_lb_pools
Revises: 0003_gpu_contracts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0004_lb_pools"
down_revision = "0003_gpu_contracts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gpu_contracts") as batch:
        batch.add_column(sa.Column("pool", sa.String(64), nullable=False, server_default="default"))
    op.create_table(
        "lb_pools",
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lb_pools")
    with op.batch_alter_table("gpu_contracts") as batch:
        batch.drop_column("pool")
