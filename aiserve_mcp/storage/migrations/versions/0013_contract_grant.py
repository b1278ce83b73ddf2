"""GPU contracts record the OAuth grant (a connected app) they were rented through, so a renewal is held
to that app's budget as it is to an API key's.

Revision ID: 0013_contract_grant
Revises: 0012_oauth
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_contract_grant"
down_revision = "0012_oauth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gpu_contracts", sa.Column("grant_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gpu_contracts") as batch:
        batch.drop_column("grant_id")
