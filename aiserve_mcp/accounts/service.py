"""Accounts: registration, login with rotating refresh tokens, API keys, and resolving credentials."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.accounts.oauth_tables import OAuthGrant
from aiserve_mcp.accounts.security import (
    API_KEY_PREFIX,
    AccessClaims,
    GrantClaims,
    TokenSigner,
    digest,
    hash_password,
    new_api_key,
    new_refresh_token,
    verify_password,
)
from aiserve_mcp.accounts.tables import ApiKey, LoginSession, RefreshToken, User
from aiserve_mcp.core.errors import AuthInvalid, Conflict, Forbidden, NotFound, ValidationFailed
from aiserve_mcp.core.principal import SCOPES, WITHHELD_BY_DEFAULT, Principal
from aiserve_mcp.core.ttl_cache import TtlCache
from aiserve_mcp.storage.database import Database

_LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def _now() -> datetime:
    return datetime.now(UTC)


def grantable_scopes(principal: Principal, scopes: Iterable[str] | None, holder: str) -> list[str]:
    """The scopes a new credential of ``principal`` (``holder``: "a key", say) gets: ``scopes``, each of
    which the principal must hold (``admin`` only an administrator), or without them the principal's
    scopes less :data:`WITHHELD_BY_DEFAULT` (``guardrails:admin`` and ``admin``), which only an explicit
    request grants."""
    if scopes is None:
        held = SCOPES.keys() if principal.scopes is None else principal.scopes
        return sorted(set(held) - WITHHELD_BY_DEFAULT)
    requested = sorted(set(scopes))
    unknown = [s for s in requested if s not in SCOPES]
    if unknown:
        raise ValidationFailed(f"unknown scopes: {', '.join(unknown)}", {"valid_scopes": sorted(SCOPES)})
    missing = [
        s for s in requested if not principal.has_scope(s) or (s == "admin" and not principal.is_admin)
    ]
    if missing:
        raise Forbidden(f"{holder} cannot grant scopes its creator lacks: {', '.join(missing)}")
    return requested


@dataclass(frozen=True)
class _Checked:
    principal: Principal
    valid_until: datetime | None  # an API key's expiry


class AccountService:
    """Accounts and credentials. A credential checked against the database is reused for
    ``cache_ttl_s`` seconds by this process (keyed by its digest; never the plaintext): logout, key
    revocation and admin changes made here drop it at once, those made by another process within the TTL.

    OAuth access tokens (``accounts.oauth``) are accepted when issued for one of ``oauth_audiences``."""

    def __init__(
        self,
        db: Database,
        signer: TokenSigner,
        refresh_ttl_s: int,
        cache_ttl_s: float = 0.0,
        oauth_audiences: Collection[str] = (),
    ) -> None:
        self._db = db
        self._signer = signer
        self._refresh_ttl = timedelta(seconds=refresh_ttl_s)
        self._checked: TtlCache[str, _Checked] = TtlCache(cache_ttl_s)
        self._audiences = frozenset(a.rstrip("/") for a in oauth_audiences)

    def _forget(self, match: Callable[[Principal], bool]) -> None:
        self._checked.forget_values(lambda checked: match(checked.principal))

    def forget_grant(self, grant_id: str) -> None:
        """Drop the cached credentials of an OAuth grant that was just revoked."""
        self._forget(lambda p: p.grant_id == grant_id)

    async def create_user(
        self, email: str, password: str, name: str | None, *, is_admin: bool = False
    ) -> User:
        """Create an account; ``email`` must already be normalised. Duplicate email: ``Conflict``."""
        password_hash = await anyio.to_thread.run_sync(hash_password, password)
        user = User(email=email, name=name, password_hash=password_hash, is_admin=is_admin, is_active=True)
        try:
            async with self._db.session() as session:
                session.add(user)
        except IntegrityError as exc:
            raise Conflict("an account with this email already exists") from exc
        return user

    async def user_by_email(self, email: str) -> User:
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.email == email))
        if user is None:
            raise NotFound(f"no user with email {email}")
        return user

    async def set_admin(self, email: str, is_admin: bool) -> User:
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.email == email))
            if user is None:
                raise NotFound(f"no user with email {email}")
            user.is_admin = is_admin
        self._forget(lambda p: p.user_id == user.id)
        return user

    async def login(self, email: str, password: str) -> tuple[User, TokenPair]:
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.email == email))
        stored_hash = user.password_hash if user is not None and user.is_active else None
        if not await anyio.to_thread.run_sync(verify_password, stored_hash, password) or user is None:
            raise AuthInvalid("invalid email or password")
        async with self._db.session() as session:
            login = LoginSession(user_id=user.id)
            session.add(login)
            await session.flush()
            pair = self._mint(session, user.id, login.id)
        return user, pair

    def _mint(self, session: AsyncSession, user_id: str, session_id: str) -> TokenPair:
        refresh = new_refresh_token()
        session.add(
            RefreshToken(
                session_id=session_id,
                token_hash=digest(refresh),
                expires_at=_now() + self._refresh_ttl,
            )
        )
        return TokenPair(self._signer.issue(user_id, session_id), refresh, self._signer.ttl_s)

    @staticmethod
    async def _login_of(session: AsyncSession, refresh_token: str) -> tuple[RefreshToken, LoginSession]:
        row = await session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == digest(refresh_token))
        )
        login = await session.get(LoginSession, row.session_id) if row is not None else None
        if row is None or login is None:
            raise AuthInvalid("refresh token is invalid")
        return row, login

    @staticmethod
    def _revoke(login: LoginSession, reason: str) -> None:
        if login.revoked_at is None:
            login.revoked_at = _now()
            login.revoked_reason = reason

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new pair issued. A spent token presented again
        revokes its whole login, since it means the token was stolen or replayed."""
        async with self._db.session() as session:
            row, login = await self._login_of(session, refresh_token)
            if login.revoked_at is not None:
                raise AuthInvalid("refresh token belongs to a login that was revoked; log in again")
            if row.expires_at <= _now():
                raise AuthInvalid("refresh token has expired; log in again")
            spent = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
                .values(used_at=_now())
            )
            reused = spent.rowcount != 1  # type: ignore[attr-defined]
            if reused:
                self._revoke(login, "refresh_token_reuse")
            else:
                user = await session.get(User, login.user_id)
                if user is None or not user.is_active:
                    raise AuthInvalid("account is disabled")
                pair = self._mint(session, user.id, login.id)
        if reused:  # raised after the commit, so the revocation is kept
            self._forget(lambda p: p.session_id == login.id)
            raise AuthInvalid("refresh token was already used; this login has been revoked, log in again")
        return pair

    async def logout(self, refresh_token: str) -> None:
        async with self._db.session() as session:
            _, login = await self._login_of(session, refresh_token)
            self._revoke(login, "logout")
        self._forget(lambda p: p.session_id == login.id)

    def mac(self, purpose: str, message: str) -> str:
        """A keyed digest of ``message`` for ``purpose`` (a form's CSRF token), under the server secret."""
        return self._signer.mac(purpose, message)

    async def authenticate(self, credential: str) -> Principal:
        """Resolve a bearer credential (access token or API key) to a principal, or raise ``AuthInvalid``."""
        checked, _ = await self._checked.get(digest(credential), lambda: self._check(credential))
        if checked.valid_until is not None and checked.valid_until <= _now():
            self._checked.discard(digest(credential))
            raise AuthInvalid("API key has expired")
        return checked.principal

    async def recheck(self, principal: Principal) -> Principal:
        """``principal`` as its credential stands now, looked up again by id (its login session, API key
        or OAuth grant, whose scopes it keeps at most): ``AuthInvalid`` once that was revoked or expired or
        the account disabled. Whatever acts later for a caller (an approved request) acts as this."""
        if principal.api_key_id is not None:
            match = (ApiKey.id == principal.api_key_id, ApiKey.user_id == principal.user_id)
            return (await self._api_key(*match)).principal
        if principal.grant_id is not None:
            return await self._grant(principal.user_id, principal.grant_id, principal.scopes or frozenset())
        return await self._authenticate_token(AccessClaims(principal.user_id, principal.session_id or ""))

    async def _check(self, credential: str) -> _Checked:
        if credential.startswith(API_KEY_PREFIX):
            return await self._authenticate_api_key(credential)
        claims = self._signer.verify(credential)
        if isinstance(claims, GrantClaims):
            return _Checked(await self._authenticate_grant(claims), None)
        return _Checked(await self._authenticate_token(claims), None)

    async def _authenticate_grant(self, claims: GrantClaims) -> Principal:
        """An OAuth access token: its grant must stand, and its scopes are the grant's (narrowed by the
        token's own); like an API key, it is an administrator's only with the ``admin`` scope."""
        if claims.audience.rstrip("/") not in self._audiences:
            raise AuthInvalid("this access token was issued for another resource")
        return await self._grant(claims.user_id, claims.grant_id, claims.scopes)

    async def _grant(self, user_id: str, grant_id: str, scopes: frozenset[str]) -> Principal:
        """The principal of ``user_id``'s standing grant ``grant_id``, with its scopes among ``scopes``."""
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(OAuthGrant, User)
                    .join(User, User.id == OAuthGrant.user_id)
                    .where(OAuthGrant.id == grant_id, User.id == user_id)
                )
            ).first()
        if row is None:
            raise AuthInvalid("access token is invalid")
        grant, user = row
        if grant.revoked_at is not None:
            raise AuthInvalid("this app was disconnected from the account; connect it again")
        if not user.is_active:
            raise AuthInvalid("account is disabled")
        held = frozenset(grant.scopes) & scopes
        return Principal(
            user.id,
            user.email,
            user.is_admin and "admin" in held,
            "oauth",
            scopes=held,
            grant_id=grant.id,
            client_id=grant.client_id,
        )

    async def _authenticate_token(self, claims: AccessClaims) -> Principal:
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(User, LoginSession)
                    .join(LoginSession, LoginSession.user_id == User.id)
                    .where(User.id == claims.user_id, LoginSession.id == claims.session_id)
                )
            ).first()
        if row is None:
            raise AuthInvalid("access token is invalid")
        user, login = row
        if login.revoked_at is not None:
            raise AuthInvalid("this login was revoked; log in again")
        if not user.is_active:
            raise AuthInvalid("account is disabled")
        return Principal(user.id, user.email, user.is_admin, "jwt", session_id=login.id)

    async def _authenticate_api_key(self, key: str) -> _Checked:
        return await self._api_key(ApiKey.key_hash == digest(key))

    async def _api_key(self, *match: ColumnElement[bool]) -> _Checked:
        """The principal of the API key that ``match`` selects, unless revoked, expired or disabled."""
        now = _now()
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(*match)
                )
            ).first()
            if row is None:
                raise AuthInvalid("API key is invalid")
            api_key, user = row
            if api_key.revoked_at is not None:
                raise AuthInvalid("API key has been revoked")
            if api_key.expires_at is not None and api_key.expires_at <= now:
                raise AuthInvalid("API key has expired")
            if not user.is_active:
                raise AuthInvalid("account is disabled")
            if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_GRANULARITY:
                api_key.last_used_at = now
        scopes = frozenset(api_key.scopes) if api_key.scopes is not None else None
        is_admin = user.is_admin and (scopes is None or "admin" in scopes)
        principal = Principal(user.id, user.email, is_admin, "api_key", scopes=scopes, api_key_id=api_key.id)
        return _Checked(principal, api_key.expires_at)

    async def create_api_key(
        self,
        principal: Principal,
        name: str,
        expires_at: datetime | None,
        scopes: Iterable[str] | None,
    ) -> tuple[ApiKey, str]:
        """Create a key for the caller with :func:`grantable_scopes`: never a scope its creator lacks, and
        without ``scopes`` none of :data:`WITHHELD_BY_DEFAULT`."""
        if expires_at is not None and expires_at <= _now():
            raise ValidationFailed("expires_at must be in the future", {"field": "expires_at"})
        requested = grantable_scopes(principal, scopes, "a key")
        plaintext = new_api_key()
        key = ApiKey(
            user_id=principal.user_id,
            name=name,
            prefix=plaintext[: len(API_KEY_PREFIX) + 6],
            key_hash=digest(plaintext),
            scopes=requested,
            expires_at=expires_at,
        )
        async with self._db.session() as session:
            session.add(key)
        return key, plaintext

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
            )
            return list(rows)

    async def revoke_api_key(self, user_id: str, key_id: str) -> ApiKey:
        async with self._db.session() as session:
            key = await session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id))
            if key is None:
                raise NotFound(f"API key {key_id} not found")
            if key.revoked_at is None:
                key.revoked_at = _now()
        self._forget(lambda p: p.api_key_id == key_id)
        return key

    async def get_user(self, user_id: str) -> User:
        async with self._db.session() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise NotFound("user not found")
        return user

    async def list_users(self, limit: int, offset: int) -> list[User]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
            )
            return list(rows)
