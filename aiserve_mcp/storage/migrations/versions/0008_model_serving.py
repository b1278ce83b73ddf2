"""Per-model serving settings: the largest batch the batcher forms and how long it may wait to fill one.

Revision ID: 0008_model_serving
Revises: 0007_models
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_model_serving"
down_revision = "0007_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("max_batch_size", sa.Integer))
        batch.add_column(sa.Column("max_queue_delay_ms", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("max_queue_delay_ms")
        batch.drop_column("max_batch_size")
