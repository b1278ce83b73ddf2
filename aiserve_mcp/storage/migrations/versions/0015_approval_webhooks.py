"""Approval webhooks: the URL each user's new approvals are POSTed to, its signing secret, and how the last
delivery went.

Revision ID: 0015_approval_webhooks
Revises: 0014_approvals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0015_approval_webhooks"
down_revision = "0014_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_webhooks",
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("last_attempt_at", UtcDateTime),
        sa.Column("last_outcome", sa.String(300)),
    )


def downgrade() -> None:
    op.drop_table("approval_webhooks")
