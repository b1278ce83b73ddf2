"""One-time upload links: a secret URL that stores one model file for the user who made it.

Only the SHA-256 of a link's secret is stored (as for API keys). A link is spent by its first ``PUT``,
in one conditional ``UPDATE``: of two requests racing with one link, exactly one claims it. A spent link
stays spent even when the upload it carried then fails.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from aiserve_mcp.accounts.security import digest
from aiserve_mcp.core.errors import Conflict, NotFound
from aiserve_mcp.serving.tables import ModelUploadLink
from aiserve_mcp.storage.database import Database

SECRET_PREFIX = "ul_"  # noqa: S105 - a prefix, not a secret
NEW_LINK = "create a new one with create_model_upload"


class UploadLinkStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, user_id: str, fields: dict[str, Any], size_bytes: int, ttl: timedelta
    ) -> tuple[ModelUploadLink, str]:
        """A link for ``user_id`` that stores one file of exactly ``size_bytes`` bytes with ``fields``
        (the upload settings), valid for ``ttl``; returns its row and its secret (shown once)."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        link = ModelUploadLink(
            user_id=user_id,
            token_sha256=digest(secret),
            fields=fields,
            size_bytes=size_bytes,
            created_at=now,
            expires_at=now + ttl,
        )
        async with self._db.session() as session:
            session.add(link)
        return link, secret

    async def claim(self, secret: str) -> ModelUploadLink:
        """Spend the link of ``secret`` and return it: ``NotFound`` for an unknown secret, ``Conflict`` for
        a link already used or expired."""
        token_sha256 = digest(secret)
        now = datetime.now(UTC)
        async with self._db.session() as session:
            claimed = await session.execute(
                update(ModelUploadLink)
                .where(
                    ModelUploadLink.token_sha256 == token_sha256,
                    ModelUploadLink.used_at.is_(None),
                    ModelUploadLink.expires_at > now,
                )
                .values(used_at=now)
            )
            link = await session.scalar(
                select(ModelUploadLink).where(ModelUploadLink.token_sha256 == token_sha256)
            )
        if link is None:
            raise NotFound("no such upload link")
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return link
        if link.used_at is not None:
            raise Conflict(
                f"this upload link was used already (at {link.used_at.isoformat()}): a link takes one PUT, "
                f"even one that failed; {NEW_LINK}"
            )
        raise Conflict(f"this upload link expired at {link.expires_at.isoformat()}; {NEW_LINK}")
