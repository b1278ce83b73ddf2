"""Credentials: Argon2id password hashes, HS256 access tokens, and opaque API keys and refresh tokens."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
import uuid
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


class TokenSigner:
    """Mints and checks access tokens. The algorithm is pinned: ``alg: none`` or RS/ES tokens are refused."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, user_id: str, session_id: str) -> str:
        now = datetime.now(UTC)
        claims = {
            "iss": JWT_ISSUER,
            "sub": user_id,
            "sid": session_id,
            "typ": "access",
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(seconds=self.ttl_s),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                issuer=JWT_ISSUER,
                options={"require": ["exp", "iat", "sub", "sid", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthInvalid("access token has expired; log in again or use your refresh token") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthInvalid("access token is invalid") from exc
        if claims.get("typ") != "access":
            raise AuthInvalid("token is not an access token")
        return AccessClaims(user_id=str(claims["sub"]), session_id=str(claims["sid"]))
