"""Approvals: each scope's approval policy (a user, an API key, an OAuth grant), and the actions waiting
for, or carried out after, their owner's decision.

Revision ID: 0014_approvals
Revises: 0013_contract_grant
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0014_approvals"
down_revision = "0013_contract_grant"
branch_labels = None
depends_on = None


def _user_column(*, index: bool) -> sa.Column[str]:
    return sa.Column(
        "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=index
    )


def upgrade() -> None:
    op.create_table(
        "approval_policies",
        sa.Column("scope", sa.String(80), primary_key=True),
        _user_column(index=True),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("threshold", sa.Numeric(18, 6)),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        _user_column(index=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("arguments", sa.JSON, nullable=False),
        sa.Column("amount", sa.Numeric(18, 6), nullable=False),
        sa.Column("description", sa.String(300), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.JSON),
        sa.Column("requested_by", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("decided_at", UtcDateTime),
    )
    op.create_index("ix_approvals_user_created", "approvals", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_table("approvals")
    op.drop_table("approval_policies")
