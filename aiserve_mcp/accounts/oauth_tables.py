"""Tables of OAuth 2.1 for MCP: clients, people's consents (grants), pending authorization requests,
authorization codes and the rotating refresh tokens of each grant. Codes and refresh tokens are stored as
SHA-256 digests only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.tables import Base, UtcDateTime, new_id, utcnow

CLIENT_ID_MAX = 1024


class OAuthClient(Base):
    """A client registered by dynamic client registration (``kind="registered"``), or one whose
    ``client_id`` is the https URL of its metadata document (``kind="document"``, refetched once
    ``fetched_at`` is older than the cache time). ``document`` is its RFC 7591 metadata."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(CLIENT_ID_MAX), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    confidential: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    fetched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class OAuthGrant(Base):
    """One consent of a person for a client: the scopes it holds and the resource (audience) its tokens
    are for. Its budget is the guardrails scope ``grant:<id>``. Revoking it ends every token it issued."""

    __tablename__ = "oauth_grants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oauth_clients.client_id", ondelete="CASCADE"), index=True
    )
    scopes: Mapped[list[str]] = mapped_column(JSON)
    resource: Mapped[str] = mapped_column(String(CLIENT_ID_MAX))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class OAuthAuthorization(Base):
    """An authorization request waiting for the person's decision on the consent page."""

    __tablename__ = "oauth_authorizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oauth_clients.client_id", ondelete="CASCADE"), index=True
    )
    redirect_uri: Mapped[str] = mapped_column(Text)
    redirect_uri_explicit: Mapped[bool] = mapped_column(Boolean)
    code_challenge: Mapped[str] = mapped_column(String(128))
    state: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[list[str] | None] = mapped_column(JSON)
    resource: Mapped[str] = mapped_column(String(CLIENT_ID_MAX))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OAuthCode(Base):
    """An authorization code: single use, short-lived, bound to its grant (client, scopes, resource), the
    redirect URI and the PKCE challenge."""

    __tablename__ = "oauth_codes"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("oauth_grants.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(Text)
    redirect_uri_explicit: Mapped[bool] = mapped_column(Boolean)
    code_challenge: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class OAuthRefreshToken(Base):
    """A refresh token of a grant (its family): spent on use; one presented again revokes the grant."""

    __tablename__ = "oauth_refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    grant_id: Mapped[str] = mapped_column(ForeignKey("oauth_grants.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
