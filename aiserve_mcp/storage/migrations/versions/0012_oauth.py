"""OAuth 2.1 for MCP: clients, grants (consents), pending authorizations, codes and refresh tokens.

Revision ID: 0012_oauth
Revises: 0011_model_upload_links
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiserve_mcp.storage.tables import UtcDateTime

revision = "0012_oauth"
down_revision = "0011_model_upload_links"
branch_labels = None
depends_on = None


def _client_column() -> sa.Column[str]:
    return sa.Column(
        "client_id",
        sa.String(1024),
        sa.ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def _grant_column() -> sa.Column[str]:
    return sa.Column(
        "grant_id",
        sa.String(36),
        sa.ForeignKey("oauth_grants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def upgrade() -> None:
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.String(1024), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("confidential", sa.Boolean, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("fetched_at", UtcDateTime),
    )
    op.create_table(
        "oauth_grants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        _client_column(),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("resource", sa.String(1024), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("revoked_at", UtcDateTime),
        sa.Column("revoked_reason", sa.String(64)),
    )
    op.create_table(
        "oauth_authorizations",
        sa.Column("id", sa.String(64), primary_key=True),
        _client_column(),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("redirect_uri_explicit", sa.Boolean, nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("state", sa.Text),
        sa.Column("scopes", sa.JSON),
        sa.Column("resource", sa.String(1024), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        _grant_column(),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("redirect_uri_explicit", sa.Boolean, nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
    )
    op.create_table(
        "oauth_refresh_tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        _grant_column(),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
    )


def downgrade() -> None:
    op.drop_table("oauth_refresh_tokens")
    op.drop_table("oauth_codes")
    op.drop_table("oauth_authorizations")
    op.drop_table("oauth_grants")
    op.drop_table("oauth_clients")
