"""OAuth 2.1 for MCP over our accounts: the authorization server behind the MCP SDK's handlers
(``protocols.oauth`` adapts this service to them). ``clients`` (``accounts.oauth_registry``) knows the
clients, ``requests`` (``accounts.oauth_requests``) keeps authorization requests until the person consents,
which makes a grant and its authorization code; this module turns codes into tokens and lists and ends
people's grants. A grant's budget is the guardrails scope ``grant:<id>``.

- An authorization code is single use; a code presented twice revokes its grant.
- Access tokens are short-lived JWTs (``aud`` = the resource) that ``AccountService.authenticate`` resolves
  on every surface; refresh tokens rotate, and one presented again revokes the grant (its family), as a
  login's do. Revoking a grant (disconnecting the client) ends its tokens at once in this process.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.accounts.oauth_registry import ClientRecord, ClientRegistry
from aiserve_mcp.accounts.oauth_requests import AuthorizationRequests, OAuthRefused
from aiserve_mcp.accounts.oauth_tables import (
    OAuthClient,
    OAuthCode,
    OAuthGrant,
    OAuthRefreshToken,
)
from aiserve_mcp.accounts.security import GrantClaims, TokenSigner, digest
from aiserve_mcp.accounts.service import AccountService
from aiserve_mcp.accounts.tables import User
from aiserve_mcp.core.errors import AiserveError, NotFound
from aiserve_mcp.storage.database import Database

_Spent = TypeVar("_Spent", OAuthCode, OAuthRefreshToken)


@dataclass(frozen=True)
class GrantUse:
    """A code, refresh token or access token of a live grant, as the token endpoint sees it."""

    grant_id: str
    client_id: str
    user_id: str
    scopes: list[str]
    resource: str
    expires_at: datetime
    redirect_uri: str = ""
    redirect_uri_explicit: bool = True
    code_challenge: str = ""


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    scopes: list[str]


@dataclass(frozen=True)
class Connection:
    """A live grant: a client connected to the person's account."""

    grant_id: str
    client_id: str
    client_name: str
    redirect_uris: list[str]
    scopes: list[str]
    resource: str
    connected_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


class OAuthService:
    """Clients, authorization requests, grants and tokens. Tokens are issued for one of ``resources``
    (this server's resource identifiers; the first is the default)."""

    def __init__(
        self,
        db: Database,
        signer: TokenSigner,
        accounts: AccountService,
        clients: ClientRegistry,
        resources: Sequence[str],
        access_ttl_s: int,
        refresh_ttl_s: int,
    ) -> None:
        self._db = db
        self._signer = signer
        self._accounts = accounts
        self.clients = clients
        self.requests = AuthorizationRequests(db, clients, resources)
        self._access_ttl_s = access_ttl_s
        self._refresh_ttl = timedelta(seconds=refresh_ttl_s)

    # The token endpoint

    async def code(self, client_id: str, code: str) -> GrantUse | None:
        """The authorization code ``code`` of ``client_id``'s live grant (spent or not), else None."""
        found = await self._find(OAuthCode, code, client_id)
        if found is None:
            return None
        row, grant = found
        return GrantUse(
            grant.id,
            grant.client_id,
            grant.user_id,
            grant.scopes,
            grant.resource,
            row.expires_at,
            row.redirect_uri,
            row.redirect_uri_explicit,
            row.code_challenge,
        )

    async def exchange_code(self, code: str) -> IssuedTokens:
        """Spend the authorization code for the grant's first tokens. A code spent before revokes the
        grant (``OAuthRefused`` ``invalid_grant``): it was intercepted or replayed."""
        return await self._spend(OAuthCode, code, None, "authorization code", "authorization_code_reuse")

    async def refresh_token(self, client_id: str, token: str) -> GrantUse | None:
        """The refresh token ``token`` of ``client_id``'s live grant (spent or not), else None."""
        found = await self._find(OAuthRefreshToken, token, client_id)
        if found is None:
            return None
        row, grant = found
        return GrantUse(
            grant.id, grant.client_id, grant.user_id, grant.scopes, grant.resource, row.expires_at
        )

    async def exchange_refresh_token(self, token: str, scopes: Iterable[str]) -> IssuedTokens:
        """Rotate: the refresh token is spent and new tokens issued with ``scopes`` (the grant's, or
        fewer). A spent token presented again revokes the grant (``OAuthRefused`` ``invalid_grant``)."""
        return await self._spend(OAuthRefreshToken, token, scopes, "refresh token", "refresh_token_reuse")

    async def _find(
        self, kind: type[_Spent], secret: str, client_id: str
    ) -> tuple[_Spent, OAuthGrant] | None:
        async with self._db.session() as session:
            found = (
                await session.execute(
                    select(kind, OAuthGrant)
                    .join(OAuthGrant, OAuthGrant.id == kind.grant_id)
                    .where(kind.token_hash == digest(secret))
                )
            ).first()
        if found is None or found[1].client_id != client_id or found[1].revoked_at is not None:
            return None
        return found[0], found[1]

    async def _spend(
        self, kind: type[_Spent], secret: str, scopes: Iterable[str] | None, what: str, reuse: str
    ) -> IssuedTokens:
        """Spend the code or refresh token ``secret`` (a row of ``kind``) for new tokens; one spent before
        revokes its grant, for the reason ``reuse``."""
        async with self._db.session() as session:
            found = await session.scalar(select(kind).where(kind.token_hash == digest(secret)))
            if found is None or found.expires_at <= _now():
                raise OAuthRefused("invalid_grant", f"{what} does not exist or has expired")
            spent = await session.execute(
                update(kind)
                .where(kind.token_hash == found.token_hash, kind.used_at.is_(None))
                .values(used_at=_now())
            )
            grant = await self._live_grant(session, found.grant_id)
            reused = spent.rowcount != 1  # type: ignore[attr-defined]
            if reused:
                self._revoke(grant, reuse)
            else:
                granted = grant.scopes if scopes is None else set(scopes) & set(grant.scopes)
                tokens = self._mint(session, grant, granted)
        if reused:  # raised after the commit, so the revocation is kept
            self._accounts.forget_grant(grant.id)
            raise OAuthRefused(
                "invalid_grant", f"{what} was already used; this connection has been revoked, connect again"
            )
        return tokens

    async def access_token(self, token: str) -> GrantUse | None:
        """The live grant an access token of ours was issued for, else None."""
        try:
            claims = self._signer.verify(token)
        except AiserveError:
            return None
        if not isinstance(claims, GrantClaims):
            return None
        async with self._db.session() as session:
            grant = await session.get(OAuthGrant, claims.grant_id)
        if grant is None or grant.revoked_at is not None:
            return None
        return GrantUse(
            grant.id,
            grant.client_id,
            grant.user_id,
            sorted(claims.scopes),
            claims.audience,
            claims.expires_at,
        )

    async def revoke(self, grant_id: str, reason: str) -> None:
        """End a grant and every token it issued (RFC 7009 revocation of any of them)."""
        async with self._db.session() as session:
            grant = await session.get(OAuthGrant, grant_id)
            if grant is not None:
                self._revoke(grant, reason)
        self._accounts.forget_grant(grant_id)

    @staticmethod
    async def _live_grant(session: AsyncSession, grant_id: str) -> OAuthGrant:
        grant = await session.get(OAuthGrant, grant_id)
        user = await session.get(User, grant.user_id) if grant is not None else None
        if grant is None or grant.revoked_at is not None:
            raise OAuthRefused("invalid_grant", "this connection was revoked; connect again")
        if user is None or not user.is_active:
            raise OAuthRefused("invalid_grant", "the account is disabled")
        return grant

    @staticmethod
    def _revoke(grant: OAuthGrant, reason: str) -> None:
        if grant.revoked_at is None:
            grant.revoked_at, grant.revoked_reason = _now(), reason

    def _mint(self, session: AsyncSession, grant: OAuthGrant, scopes: Iterable[str]) -> IssuedTokens:
        refresh = "ort_" + secrets.token_urlsafe(32)
        session.add(
            OAuthRefreshToken(
                grant_id=grant.id, token_hash=digest(refresh), expires_at=_now() + self._refresh_ttl
            )
        )
        granted = sorted(scopes)
        access = self._signer.issue_grant(
            grant.user_id, grant.id, grant.resource, granted, self._access_ttl_s
        )
        return IssuedTokens(access, refresh, self._access_ttl_s, granted)

    # The person's connected clients

    async def connections(self, user_id: str) -> list[Connection]:
        """The clients connected to ``user_id``'s account: one entry per live grant, oldest first."""
        async with self._db.session() as session:
            return [connection for _, connection in await self._connected(session, user_id)]

    async def disconnect(self, user_id: str, client_id: str) -> list[Connection]:
        """Revoke every grant of ``user_id`` to ``client_id`` (its tokens stop working at once); a
        registered client nobody else is connected through is deleted. The connections that ended."""
        async with self._db.session() as session:
            connected = await self._connected(session, user_id, client_id)
            if not connected:
                raise NotFound(f"no app '{client_id}' is connected to your account")
            for grant, _ in connected:
                self._revoke(grant, "disconnected")
            await session.flush()
            await self.clients.drop_unused(session, created_before=_now(), client_id=client_id)
        for grant, _ in connected:
            self._accounts.forget_grant(grant.id)
        return [connection for _, connection in connected]

    @staticmethod
    async def _connected(
        session: AsyncSession, user_id: str, client_id: str | None = None
    ) -> list[tuple[OAuthGrant, Connection]]:
        """The live grants of ``user_id`` (to ``client_id`` only, when given), oldest first."""
        query = (
            select(OAuthGrant, OAuthClient)
            .join(OAuthClient, OAuthClient.client_id == OAuthGrant.client_id)
            .where(OAuthGrant.user_id == user_id, OAuthGrant.revoked_at.is_(None))
            .order_by(OAuthGrant.created_at, OAuthGrant.id)
        )
        if client_id is not None:
            query = query.where(OAuthGrant.client_id == client_id)
        connected = []
        for grant, client in (await session.execute(query)).all():
            uris = client.document.get("redirect_uris")
            name = ClientRecord(client.client_id, client.document, None).name
            redirect_uris = [str(u) for u in uris] if isinstance(uris, list) else []
            connection = Connection(
                grant.id, grant.client_id, name, redirect_uris, grant.scopes, grant.resource, grant.created_at
            )
            connected.append((grant, connection))
        return connected
