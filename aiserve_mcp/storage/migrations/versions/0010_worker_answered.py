"""GPU contracts record when their worker first answered an authenticated health check: until then no
traffic is routed to them.

Revision ID: 0010_worker_answered
Revises: 0009_a2a_tasks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0010_worker_answered"
down_revision = "0009_a2a_tasks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gpu_contracts", sa.Column("worker_answered_at", UtcDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gpu_contracts") as batch:
        batch.drop_column("worker_answered_at")
