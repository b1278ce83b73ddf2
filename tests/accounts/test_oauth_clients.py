"""OAuth clients named by the https URL of their metadata document: fetched under the egress rules (public
addresses only unless the operator allows the host), accepted only when the document describes the
public client at that very URL, within the size limit, and kept a while once fetched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiserve_mcp.core.settings import Settings
from tests.conftest import app_client
from tests.protocols.oauth_flow import REDIRECT_URI, client_document


async def fetched(
    settings: Settings, tmp_path: Path, allow: bool = True, **document: Any
) -> tuple[bool, int]:
    """Whether the server knows the client a served document describes (with ``document``'s fields), and
    how many times it fetched the document to find out (asked twice)."""
    async with client_document(tmp_path, **document) as served:
        tuned = settings.model_copy(
            update={
                "oauth_client_fetch_allowed_hosts": [served.host] if allow else [],
                "oauth_client_fetch_ca_file": served.ca_file,
            }
        )
        async with app_client(tuned) as (app, _):
            clients = app.state.services.oauth.clients
            first, second = await clients.get(served.url), await clients.get(served.url)
    assert (first is None) == (second is None)
    if first is not None:
        assert first.client_secret is None and first.document["redirect_uris"] == [REDIRECT_URI]
    return first is not None, served.fetches


async def test_a_document_is_fetched_once_and_kept(settings: Settings, tmp_path: Path) -> None:
    assert await fetched(settings, tmp_path) == (True, 1)


async def test_a_host_on_a_private_address_is_not_reached_unless_allowed(
    settings: Settings, tmp_path: Path
) -> None:
    assert await fetched(settings, tmp_path, allow=False) == (False, 0)


async def test_a_document_must_name_its_own_url(settings: Settings, tmp_path: Path) -> None:
    known, _ = await fetched(settings, tmp_path, client_id="https://elsewhere.example/client.json")
    assert not known


async def test_a_document_must_describe_a_public_client(settings: Settings, tmp_path: Path) -> None:
    known, _ = await fetched(settings, tmp_path, token_endpoint_auth_method="client_secret_basic")
    assert not known


async def test_a_document_must_list_redirect_uris(settings: Settings, tmp_path: Path) -> None:
    assert not (await fetched(settings, tmp_path, redirect_uris=[]))[0]


async def test_a_document_over_the_size_limit_is_refused(settings: Settings, tmp_path: Path) -> None:
    assert not (await fetched(settings, tmp_path, padding="x" * 70_000))[0]
