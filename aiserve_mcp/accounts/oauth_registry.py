"""The OAuth clients this server knows: those registered dynamically (RFC 7591), and those whose
``client_id`` is the https URL of their metadata document (Client ID Metadata Documents).

A document is fetched under the egress rules (``traffic.documents``), must name its own URL as
``client_id``, list redirect URIs and describe a public client (``token_endpoint_auth_method`` "none"); it
is kept ``DOCUMENT_TTL`` and fetched again after. A confidential registered client's secret is derived from
its id under the server's secret, so no secret is stored. Registered clients left without a live grant
and without a pending authorization for ``UNUSED_CLIENT_TTL`` are dropped; a token request from one then
gets ``invalid_client``, which tells the client to register again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, exists
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.accounts.oauth_tables import CLIENT_ID_MAX, OAuthAuthorization, OAuthClient, OAuthGrant
from aiserve_mcp.accounts.security import TokenSigner
from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.storage.database import Database

log = logging.getLogger(__name__)

DOCUMENT_TTL = timedelta(minutes=5)
UNUSED_CLIENT_TTL = timedelta(days=1)
_SECRET_PURPOSE = "oauth-client-secret"  # noqa: S105 - the purpose of a derived secret


class ClientDocuments(Protocol):
    """Fetches a client metadata document (``traffic.documents.DocumentFetcher``)."""

    async def fetch(self, url: str) -> bytes: ...


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    document: dict[str, Any]  # its RFC 7591 metadata
    client_secret: str | None

    @property
    def name(self) -> str:
        name = self.document.get("client_name")
        return name if isinstance(name, str) and name else self.client_id


def _now() -> datetime:
    return datetime.now(UTC)


def is_document_url(client_id: str) -> bool:
    """Whether ``client_id`` names a client metadata document (an https URL) rather than a registration."""
    return client_id.startswith("https://")


def _client_document(url: str, body: bytes) -> dict[str, Any] | None:
    """The metadata of a fetched client document, or None (logged) when it cannot describe this client."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    problem = None
    if not isinstance(document, dict):
        problem = "is not a JSON object"
    elif document.get("client_id") != url:
        problem = "names another client_id"
    elif not isinstance(document.get("redirect_uris"), list) or not document["redirect_uris"]:
        problem = "has no redirect_uris"
    elif document.get("token_endpoint_auth_method", "none") != "none" or "client_secret" in document:
        problem = "is not a public client's (token_endpoint_auth_method must be 'none')"
    if problem is not None:
        log.info("client metadata document %s %s", url, problem)
        return None
    assert isinstance(document, dict)
    return {**document, "token_endpoint_auth_method": "none"}


class ClientRegistry:
    """Registered clients and fetched client metadata documents, in the database."""

    def __init__(self, db: Database, signer: TokenSigner, documents: ClientDocuments) -> None:
        self._db = db
        self._signer = signer
        self._documents = documents

    async def register(self, client_id: str, document: dict[str, Any], confidential: bool) -> str | None:
        """Record a dynamically registered client; its secret (None for a public client)."""
        async with self._db.session() as session:
            await self.drop_unused(session, created_before=_now() - UNUSED_CLIENT_TTL)
            client = OAuthClient(
                client_id=client_id, kind="registered", document=document, confidential=confidential
            )
            session.add(client)
        return self._secret(client_id) if confidential else None

    def _secret(self, client_id: str) -> str:
        return self._signer.mac(_SECRET_PURPOSE, client_id)

    async def get(self, client_id: str) -> ClientRecord | None:
        """A registered client, or the client a metadata document URL names (fetched when not cached);
        None when there is no such client."""
        if is_document_url(client_id):
            return await self._document_client(client_id)
        async with self._db.session() as session:
            row = await session.get(OAuthClient, client_id)
        if row is None or row.kind != "registered":
            return None
        return ClientRecord(
            row.client_id, row.document, self._secret(client_id) if row.confidential else None
        )

    async def _document_client(self, url: str) -> ClientRecord | None:
        if len(url) > CLIENT_ID_MAX:
            return None
        async with self._db.session() as session:
            row = await session.get(OAuthClient, url)
        if row is not None and row.fetched_at is not None and row.fetched_at > _now() - DOCUMENT_TTL:
            return ClientRecord(url, row.document, None)
        try:
            document = _client_document(url, await self._documents.fetch(url))
        except AiserveError as exc:
            log.info("client metadata document %s cannot be used: %s", url, exc.message)
            return None
        if document is None:
            return None
        try:
            async with self._db.session() as session:
                stored = await session.get(OAuthClient, url)
                if stored is None:
                    stored = OAuthClient(client_id=url, kind="document", confidential=False)
                    session.add(stored)
                stored.document, stored.fetched_at = document, _now()
        except IntegrityError:
            pass  # another process stored it at the same moment
        return ClientRecord(url, document, None)

    @staticmethod
    async def drop_unused(
        session: AsyncSession, created_before: datetime, client_id: str | None = None
    ) -> None:
        """Delete the registered clients (only ``client_id``, when given) made before ``created_before``
        that have no live grant and no pending authorization."""
        live = exists().where(OAuthGrant.client_id == OAuthClient.client_id, OAuthGrant.revoked_at.is_(None))
        pending = exists().where(OAuthAuthorization.client_id == OAuthClient.client_id)
        query = delete(OAuthClient).where(
            OAuthClient.kind == "registered", OAuthClient.created_at < created_before, ~live, ~pending
        )
        if client_id is not None:
            query = query.where(OAuthClient.client_id == client_id)
        await session.execute(query)
