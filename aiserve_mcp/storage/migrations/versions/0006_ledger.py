"""The credit ledger, payment webhooks seen, guardrail limits, and the API key a contract was rented with.

Revision ID: 0006_ledger
Revises: 0005_spending
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0006_ledger"
down_revision = "0005_spending"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(18, 6)


def upgrade() -> None:
    with op.batch_alter_table("gpu_contracts") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(36)))
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("user_id", sa.String(36), index=True),
        sa.Column("balance", MONEY, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("description", sa.String(300), nullable=False),
        sa.Column("reference", sa.String(120), index=True),
        sa.Column("gateway", sa.String(20)),
        sa.Column("provider_ref", sa.String(120), index=True),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("failure", sa.String(300)),
        sa.Column("created_at", UtcDateTime, nullable=False, index=True),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("user_id", "idempotency_key"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("transaction_id", sa.String(40), sa.ForeignKey("ledger_transactions.id"), index=True),
        sa.Column("account_id", sa.String(120), sa.ForeignKey("ledger_accounts.id"), index=True),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "ledger_holds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("captured", MONEY, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("reference", sa.String(120), nullable=False, index=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("settled_at", UtcDateTime),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("received_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "guardrail_limits",
        sa.Column("scope", sa.String(80), primary_key=True),
        sa.Column("window", sa.String(40), primary_key=True),
        sa.Column("seconds", sa.Integer, nullable=False),
        sa.Column("limit", MONEY, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "guardrail_limits",
        "webhook_events",
        "ledger_holds",
        "ledger_entries",
        "ledger_transactions",
        "ledger_accounts",
    ):
        op.drop_table(table)
    with op.batch_alter_table("gpu_contracts") as batch:
        batch.drop_column("api_key_id")
