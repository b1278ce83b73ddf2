"""One-time model upload links: a URL a model file is PUT to, bound to its user, a size and an expiry.

Revision ID: 0011_model_upload_links
Revises: 0010_worker_answered
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0011_model_upload_links"
down_revision = "0010_worker_answered"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_upload_links",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
    )


def downgrade() -> None:
    op.drop_table("model_upload_links")
