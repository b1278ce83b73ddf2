"""A2A tasks: each task of the agent surface, owned by the user who sent it, stored as the SDK's JSON.

Revision ID: 0009_a2a_tasks
Revises: 0008_model_serving
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0009_a2a_tasks"
down_revision = "0008_model_serving"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "a2a_tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("context_id", sa.Text, nullable=False),  # chosen by the client: any length
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("task", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_a2a_tasks_user_updated", "a2a_tasks", ["user_id", "updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_a2a_tasks_user_updated", table_name="a2a_tasks")
    op.drop_table("a2a_tasks")
