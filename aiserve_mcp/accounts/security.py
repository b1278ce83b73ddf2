"""Credentials: Argon2id password hashes, HS256 access tokens, and opaque API keys and refresh tokens."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from aiserve_mcp.core.errors import AuthInvalid

API_KEY_PREFIX = "ak_live_"
REFRESH_TOKEN_PREFIX = "rt_"  # noqa: S105 - a prefix, not a secret
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "aiserve"
_MIN_SECRET_BYTES = 32

_hasher = PasswordHasher()  # Argon2id with the library's current recommended cost
_DECOY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check ``password``; with no hash (unknown user) burn the same time and return False."""
    try:
        return _hasher.verify(password_hash or _DECOY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def digest(secret: str) -> str:
    """SHA-256 of a high-entropy secret (API keys, refresh tokens): only this is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """The JWT signing secret: from settings, else generated once and kept (mode 0600) in the data dir.

    Processes that start together on a fresh data directory agree on one secret: each writes a complete
    candidate to a private temporary file and links it into place; the first link wins, and every other
    process reads the winner's file, which is complete from the moment its name exists."""
    if configured is not None:
        return _checked_secret(configured, "AISERVE_JWT_SECRET")
    path = data_dir / "jwt_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, candidate = tempfile.mkstemp(prefix=".jwt_secret.", dir=data_dir)  # created with mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(candidate, path)
    finally:
        os.unlink(candidate)
    return _checked_secret(path.read_text().strip(), str(path))


def _checked_secret(secret: str, source: str) -> str:
    """``secret`` when it is long enough to sign tokens with; a short or empty one is refused."""
    if len(secret.encode()) < _MIN_SECRET_BYTES:
        raise ValueError(f"the JWT secret in {source} must be at least {_MIN_SECRET_BYTES} bytes long")
    return secret


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str


@dataclass(frozen=True)
class GrantClaims:
    """An OAuth access token's claims: the user, their consent (grant), the resource it was issued for
    (``aud``) and the scopes it carries."""

    user_id: str
    grant_id: str
    audience: str
    scopes: frozenset[str]
    expires_at: datetime


class TokenSigner:
    """Mints and checks access tokens. The algorithm is pinned: ``alg: none`` or RS/ES tokens are refused."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, user_id: str, session_id: str) -> str:
        return self._encode({"sub": user_id, "sid": session_id, "typ": "access"}, self.ttl_s)

    def issue_grant(
        self, user_id: str, grant_id: str, audience: str, scopes: Iterable[str], ttl_s: int
    ) -> str:
        """An OAuth access token for ``grant_id``, valid ``ttl_s`` seconds at ``audience`` only."""
        claims = {"sub": user_id, "gid": grant_id, "aud": audience, "scope": " ".join(sorted(scopes))}
        return self._encode({**claims, "typ": "grant"}, ttl_s)

    def _encode(self, claims: dict[str, str], ttl_s: int) -> str:
        now = datetime.now(UTC)
        timed = {"iat": now, "nbf": now, "exp": now + timedelta(seconds=ttl_s)}
        full = {"iss": JWT_ISSUER, **claims, **timed, "jti": uuid.uuid4().hex}
        return jwt.encode(full, self._secret, algorithm=JWT_ALGORITHM)

    def mac(self, purpose: str, message: str) -> str:
        """An HMAC-SHA256 of ``message`` under the signing secret, bound to ``purpose`` (hex)."""
        return hmac.new(self._secret.encode(), f"{purpose}\0{message}".encode(), hashlib.sha256).hexdigest()

    def verify(self, token: str) -> AccessClaims | GrantClaims:
        """A login's access token's claims, or an OAuth access token's (whose audience the caller checks)."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                issuer=JWT_ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthInvalid("access token has expired; log in again or use your refresh token") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthInvalid("access token is invalid") from exc
        kind = claims.get("typ")
        if kind == "access" and isinstance(claims.get("sid"), str):
            return AccessClaims(user_id=str(claims["sub"]), session_id=claims["sid"])
        fields = [claims.get(name) for name in ("gid", "aud", "scope")]
        if kind == "grant" and all(isinstance(field, str) for field in fields):
            grant_id, audience, scope = (str(field) for field in fields)
            expires_at = datetime.fromtimestamp(claims["exp"], UTC)
            return GrantClaims(str(claims["sub"]), grant_id, audience, frozenset(scope.split()), expires_at)
        raise AuthInvalid("token is not an access token")
