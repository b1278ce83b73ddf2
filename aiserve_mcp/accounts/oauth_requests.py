"""OAuth authorization requests and people's decisions on them: ``/authorize`` keeps a request here for
the consent page, which shows it (``pending``) and answers it once. ``approve`` records the person's
consent as a **grant** (the client, the scopes chosen, never more than the client asked for or the person
holds, and ``guardrails:admin``/``admin`` only when asked for by name, and the resource of RFC 8707 its
tokens are bound to) with a single-use authorization code, stored as a digest and bound to the redirect
URI and the PKCE challenge; ``deny`` answers ``access_denied``."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.accounts.oauth_registry import ClientRecord, ClientRegistry
from aiserve_mcp.accounts.oauth_tables import OAuthAuthorization, OAuthCode, OAuthGrant
from aiserve_mcp.accounts.security import digest
from aiserve_mcp.accounts.service import grantable_scopes
from aiserve_mcp.core.errors import NotFound, ValidationFailed
from aiserve_mcp.core.principal import SCOPES, Principal
from aiserve_mcp.storage.database import Database

CODE_TTL = timedelta(minutes=5)
REQUEST_TTL = timedelta(minutes=10)  # to decide on the consent page
_EXPIRED = "this authorization request has expired or was answered; start again from the app"


class OAuthRefused(ValidationFailed):
    """A request the authorization server refuses with the OAuth error code ``error``."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message, {"oauth_error": error})
        self.error = error


@dataclass(frozen=True)
class PendingAuthorization:
    id: str
    client: ClientRecord
    redirect_uri: str
    scopes: list[str] | None  # those the client asked for; None: it named none
    resource: str


@dataclass(frozen=True)
class Redirect:
    """Where the person's browser goes back to the client, with these query parameters."""

    uri: str
    params: dict[str, str]


def _now() -> datetime:
    return datetime.now(UTC)


class AuthorizationRequests:
    """Pending authorization requests of ``clients``, for one of ``resources`` (this server's resource
    identifiers; the first is the default)."""

    def __init__(self, db: Database, clients: ClientRegistry, resources: Sequence[str]) -> None:
        self._db = db
        self._clients = clients
        self._resources = [r.rstrip("/") for r in resources]

    async def start(
        self,
        client_id: str,
        redirect_uri: str,
        redirect_uri_explicit: bool,
        code_challenge: str,
        state: str | None,
        scopes: list[str] | None,
        resource: str | None,
    ) -> str:
        """Keep an authorization request for the consent page; its id. ``OAuthRefused`` with
        ``invalid_target`` for a resource that is not this server, ``invalid_scope`` for unknown scopes."""
        target = (resource or self._resources[0]).rstrip("/")
        if target not in self._resources:
            raise OAuthRefused("invalid_target", f"{resource} is not a resource of this server")
        unknown = sorted(set(scopes or ()) - SCOPES.keys())
        if unknown:
            raise OAuthRefused("invalid_scope", f"unknown scopes: {', '.join(unknown)}")
        request_id = secrets.token_urlsafe(24)
        async with self._db.session() as session:
            for stale in (OAuthAuthorization, OAuthCode):  # what expired is dropped on the way
                await session.execute(delete(stale).where(stale.expires_at < _now()))
            session.add(
                OAuthAuthorization(
                    id=request_id,
                    client_id=client_id,
                    redirect_uri=redirect_uri,
                    redirect_uri_explicit=redirect_uri_explicit,
                    code_challenge=code_challenge,
                    state=state,
                    scopes=scopes,
                    resource=target,
                    expires_at=_now() + REQUEST_TTL,
                )
            )
        return request_id

    async def pending(self, request_id: str) -> PendingAuthorization:
        """The authorization request waiting for a decision; ``NotFound`` once decided or expired."""
        async with self._db.session() as session:
            request = await session.get(OAuthAuthorization, request_id)
        client = (
            await self._clients.get(request.client_id) if request and request.expires_at > _now() else None
        )
        if request is None or client is None:
            raise NotFound(_EXPIRED)
        return PendingAuthorization(
            request.id, client, request.redirect_uri, request.scopes, request.resource
        )

    @staticmethod
    def offered_scopes(pending: PendingAuthorization, principal: Principal) -> list[str]:
        """The scopes the consent page offers ``principal``: those the client asked for (all theirs but
        ``guardrails:admin`` and ``admin`` when it named none) that the person can grant."""
        asked = pending.scopes if pending.scopes is not None else grantable_scopes(principal, None, "")
        return [
            s for s in sorted(set(asked)) if principal.has_scope(s) and (s != "admin" or principal.is_admin)
        ]

    async def approve(
        self, request_id: str, principal: Principal, scopes: Iterable[str]
    ) -> tuple[str, Redirect]:
        """Grant the client ``scopes`` (some of ``offered_scopes``) on behalf of ``principal``: the new
        grant's id and the redirect carrying the authorization code."""
        pending = await self.pending(request_id)
        chosen = sorted(set(scopes))
        extra = sorted(set(chosen) - set(self.offered_scopes(pending, principal)))
        if extra:
            raise ValidationFailed(f"the app did not ask for these scopes: {', '.join(extra)}")
        chosen = grantable_scopes(principal, chosen, "a connection")
        code = "oac_" + secrets.token_urlsafe(32)
        async with self._db.session() as session:
            request = await self._take(session, request_id)
            grant = OAuthGrant(
                user_id=principal.user_id,
                client_id=request.client_id,
                scopes=chosen,
                resource=request.resource,
            )
            session.add(grant)
            await session.flush()
            session.add(
                OAuthCode(
                    token_hash=digest(code),
                    grant_id=grant.id,
                    redirect_uri=request.redirect_uri,
                    redirect_uri_explicit=request.redirect_uri_explicit,
                    code_challenge=request.code_challenge,
                    expires_at=_now() + CODE_TTL,
                )
            )
        return grant.id, Redirect(request.redirect_uri, self._with_state({"code": code}, request.state))

    async def deny(self, request_id: str) -> Redirect:
        """The person refused: the redirect telling the client ``access_denied``."""
        async with self._db.session() as session:
            request = await self._take(session, request_id)
        refusal = {"error": "access_denied", "error_description": "the person refused the request"}
        return Redirect(request.redirect_uri, self._with_state(refusal, request.state))

    @staticmethod
    def _with_state(params: dict[str, str], state: str | None) -> dict[str, str]:
        return params if state is None else {**params, "state": state}

    @staticmethod
    async def _take(session: AsyncSession, request_id: str) -> OAuthAuthorization:
        """Remove the pending request (so it is decided once) and return it."""
        request = await session.get(OAuthAuthorization, request_id)
        deleted = await session.execute(delete(OAuthAuthorization).where(OAuthAuthorization.id == request_id))
        if request is None or deleted.rowcount != 1 or request.expires_at <= _now():  # type: ignore[attr-defined]
            raise NotFound(_EXPIRED)
        return request
