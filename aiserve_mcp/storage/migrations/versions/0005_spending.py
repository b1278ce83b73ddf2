"""Spending guardrails: scope lock rows, recorded spends and window resets.

Revision ID: 0005_spending
Revises: 0004_lb_pools
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0005_spending"
down_revision = "0004_lb_pools"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_scopes",
        sa.Column("scope", sa.String(80), primary_key=True),
    )
    op.create_table(
        "spend_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("scope", sa.String(80), nullable=False),
        sa.Column("amount", sa.Numeric(18, 6), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("scope", "idempotency_key", name="uq_spend_events_scope_idempotency_key"),
    )
    op.create_index("ix_spend_events_scope_at", "spend_events", ["scope", "at"])
    op.create_table(
        "spend_resets",
        sa.Column("scope", sa.String(80), primary_key=True),
        sa.Column("window", sa.String(40), primary_key=True),
        sa.Column("reset_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("spend_resets")
    op.drop_index("ix_spend_events_scope_at", table_name="spend_events")
    op.drop_table("spend_events")
    op.drop_table("spend_scopes")
