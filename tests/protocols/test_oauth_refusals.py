"""What the OAuth authorization server refuses, with flows done by hand against a served app: a wrong PKCE
verifier, a redirect URI that is not the registered one, a resource of another server, a code or refresh
token used twice (which revokes the connection), revoked and disconnected clients, and a client that no
longer exists (``invalid_client``). And what consent grants: never ``guardrails:admin`` unless ticked,
and a budget that is enforced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiserve_mcp.core.settings import Settings
from tests.conftest import Account, sign_up
from tests.mcp_clients import mcp_client
from tests.protocols.oauth_flow import (
    REDIRECT_URI,
    OAuthServer,
    Person,
    authorize_url,
    exchange,
    oauth_server,
    offered_scopes,
    pkce,
    refresh,
    register,
)


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[OAuthServer]:
    async with oauth_server(settings, tmp_path) as server:
        yield server


@pytest.fixture
async def account(served: OAuthServer) -> Account:
    return await sign_up(served.http)


@dataclass
class Authorized:
    client_id: str
    verifier: str
    answer: dict[str, str]  # the query the browser was sent back to the app with
    person: Person


async def authorized(served: OAuthServer, account: Account, **choices: Any) -> Authorized:
    """A registered public client, authorized by ``account`` making ``choices`` (see ``Person``);
    ``scope`` and ``redirect_uri`` go into the authorization request when given."""
    client_id = (await register(served.http))["client_id"]
    secret = pkce()
    request = {name: choices.pop(name) for name in ("scope", "redirect_uri") if name in choices}
    person = Person(served.url, account.email, **choices)
    location = await person.authorize(authorize_url(served.url, client_id, secret.code_challenge, **request))
    assert str(location).startswith(REDIRECT_URI)
    return Authorized(client_id, secret.code_verifier, dict(location.params), person)


async def tokens(served: OAuthServer, account: Account, **choices: Any) -> tuple[str, dict[str, Any]]:
    """The client id and the first tokens of a new connection."""
    done = await authorized(served, account, **choices)
    response = await exchange(served.http, done.client_id, done.answer["code"], done.verifier)
    assert response.status_code == 200, response.text
    return done.client_id, response.json()


async def works(served: OAuthServer, access_token: str) -> bool:
    response = await served.http.get(
        "/api/v1/guardrails/spending", headers={"Authorization": f"Bearer {access_token}"}
    )
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def oauth_error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    return error


async def test_a_wrong_verifier_is_refused_and_the_code_still_works_with_the_right_one(
    served: OAuthServer, account: Account
) -> None:
    done = await authorized(served, account)
    assert done.answer["state"] == "state-1" and done.answer["iss"] == served.url
    wrong = await exchange(served.http, done.client_id, done.answer["code"], pkce().code_verifier)
    assert oauth_error(wrong) == "invalid_grant"
    right = await exchange(served.http, done.client_id, done.answer["code"], done.verifier)
    assert right.status_code == 200 and right.json()["token_type"] == "Bearer"
    assert right.json()["expires_in"] == 3600


async def test_only_the_registered_redirect_uri_is_accepted(served: OAuthServer, account: Account) -> None:
    client_id = (await register(served.http))["client_id"]
    secret = pkce()
    other = authorize_url(served.url, client_id, secret.code_challenge, redirect_uri=REDIRECT_URI + "/")
    refused = await served.http.get(other)
    assert oauth_error(refused) == "invalid_request"  # answered here, never sent to an unknown address
    done = await authorized(served, account)
    changed = await exchange(
        served.http,
        done.client_id,
        done.answer["code"],
        done.verifier,
        redirect_uri="http://localhost:3030/x",
    )
    assert oauth_error(changed) == "invalid_request"


async def test_a_resource_of_another_server_is_refused(served: OAuthServer) -> None:
    client_id = (await register(served.http))["client_id"]
    url = authorize_url(
        served.url, client_id, pkce().code_challenge, resource="https://elsewhere.example/mcp"
    )
    refused = await served.http.get(url)
    assert refused.status_code == 302
    location = httpx.URL(refused.headers["location"])
    assert str(location).startswith(REDIRECT_URI)
    assert (location.params["error"], location.params["state"]) == ("invalid_target", "state-1")


async def test_a_code_is_single_use_and_a_replay_revokes_its_tokens(
    served: OAuthServer, account: Account
) -> None:
    done = await authorized(served, account)
    first = await exchange(served.http, done.client_id, done.answer["code"], done.verifier)
    assert first.status_code == 200 and await works(served, first.json()["access_token"])
    replay = await exchange(served.http, done.client_id, done.answer["code"], done.verifier)
    assert oauth_error(replay) == "invalid_grant"
    assert not await works(served, first.json()["access_token"])


async def test_a_reused_refresh_token_revokes_the_whole_family(served: OAuthServer, account: Account) -> None:
    client_id, first = await tokens(served, account)
    rotated = await refresh(served.http, client_id, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"] and await works(served, second["access_token"])
    reused = await refresh(served.http, client_id, first["refresh_token"])
    assert oauth_error(reused) == "invalid_grant"
    assert oauth_error(await refresh(served.http, client_id, second["refresh_token"])) == "invalid_grant"
    assert not await works(served, second["access_token"])


async def test_revoking_a_token_ends_the_connection(served: OAuthServer, account: Account) -> None:
    client_id, issued = await tokens(served, account)
    # The SDK's revocation handler wants a client_secret field even from a public client: empty here.
    form = {"token": issued["access_token"], "client_id": client_id, "client_secret": ""}
    revoked = await served.http.post("/revoke", data=form)
    assert revoked.status_code == 200
    assert not await works(served, issued["access_token"])
    assert oauth_error(await refresh(served.http, client_id, issued["refresh_token"])) == "invalid_grant"


async def test_a_disconnected_client_stops_at_once_and_then_no_longer_exists(
    served: OAuthServer, account: Account
) -> None:
    client_id, issued = await tokens(served, account)
    async with mcp_client(served.url, account.access_token) as person:
        listed = (await person.call_tool("list_connected_clients", {})).structured_content
        assert listed is not None and [c["client_id"] for c in listed["clients"]] == [client_id]
        ended = await person.call_tool("disconnect_client", {"client_id": client_id})
        assert not ended.is_error
        again = await person.call_tool("disconnect_client", {"client_id": client_id})
        assert again.is_error  # nothing is connected any more
    assert not await works(served, issued["access_token"])
    gone = await refresh(served.http, client_id, issued["refresh_token"])
    assert oauth_error(gone, 401) == "invalid_client"  # the client registers again


async def test_guardrails_admin_is_granted_only_when_ticked(served: OAuthServer, account: Account) -> None:
    asked = "gpu:read guardrails:admin"
    _, default = await tokens(served, account, scope=asked)
    assert default["scope"] == "gpu:read"
    _, ticked = await tokens(served, account, scope=asked, scopes=["gpu:read", "guardrails:admin"])
    assert ticked["scope"] == "gpu:read guardrails:admin"
    unnamed = await authorized(served, account)
    [page] = unnamed.person.consent_pages
    offered = offered_scopes(page)
    assert "gpu:read" in offered and not {"guardrails:admin", "admin"} & set(offered)
    client_id = (await register(served.http))["client_id"]
    greedy = Person(served.url, account.email, scopes=["gpu:read", "guardrails:admin"])
    url = authorize_url(served.url, client_id, pkce().code_challenge, scope="gpu:read")
    stopped = await greedy.authorize(url)
    assert stopped.path == "/console/oauth/consent"  # refused on the page: the app did not ask for it
    [refusal] = greedy.refusals
    assert "did not ask for these scopes: guardrails:admin" in refusal


async def test_denying_sends_the_app_access_denied(served: OAuthServer, account: Account) -> None:
    done = await authorized(served, account, allow=False)
    assert done.answer["error"] == "access_denied" and done.answer["state"] == "state-1"
    assert "code" not in done.answer


async def test_the_budget_given_on_the_consent_page_is_enforced(
    served: OAuthServer, account: Account
) -> None:
    _, issued = await tokens(served, account, budget={"daily": "5"})
    headers = {"Authorization": f"Bearer {issued['access_token']}"}
    record = "/api/v1/guardrails/spending/record"
    assert (await served.http.post(record, json={"amount": 4}, headers=headers)).status_code == 200
    over = await served.http.post(record, json={"amount": 2}, headers=headers)
    assert over.status_code == 402 and over.json()["code"] == "SPENDING_LIMIT"
    assert over.json()["violations"][0]["scope"] == "oauth_client"
    personal = await served.http.post(record, json={"amount": 2}, headers=account.headers)
    assert personal.status_code == 200  # the person's own limits are not the app's budget


async def test_registration_is_rate_limited_per_address(settings: Settings, tmp_path: Path) -> None:
    async with oauth_server(settings.model_copy(update={"auth_rate_limit": 2}), tmp_path) as server:
        for _ in range(2):
            await register(server.http)
        refused = await server.http.post("/register", json={"redirect_uris": [REDIRECT_URI]})
    assert refused.status_code == 429 and refused.json()["code"] == "RATE_LIMITED"
    assert int(refused.headers["retry-after"]) > 0
