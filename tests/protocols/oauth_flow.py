"""OAuth sign-in as an MCP host does it: the MCP SDK's ``OAuthClientProvider``, with the person's browser
played over plain HTTP (the console's sign-in form, then the consent page), and the pieces of a flow done
by hand for the tests of what the server refuses."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import httpx2
import trustme
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.oauth2 import PKCEParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from tests.conftest import PASSWORD, free_port, serve
from tests.console.session import csrf_of

REDIRECT_URI = "http://localhost:3030/callback"
_HIDDEN = re.compile(r'<input type="hidden" name="(request|next)" value="([^"]*)"')
_SCOPE = re.compile(r'<input type="checkbox" name="scope" value="([^"]+)" id="[^"]+" ?(checked)?>')


def ticked_scopes(page: str) -> list[str]:
    return [name for name, checked in _SCOPE.findall(page) if checked]


def offered_scopes(page: str) -> list[str]:
    return [name for name, _ in _SCOPE.findall(page)]


@dataclass
class Person:
    """Someone at a browser who signs in on the console form and answers the consent page: ``Allow``
    with ``scopes`` ticked (None: as the page ticks them) and ``budget`` (window -> USD), or ``Deny``."""

    server_url: str
    email: str
    allow: bool = True
    scopes: list[str] | None = None
    budget: dict[str, str] = field(default_factory=dict)
    consent_pages: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def authorize(self, url: str) -> httpx.URL:
        """Open ``url`` (the authorization request) and answer each page until the server sends the
        browser to another site (the app): that URL; or the page's URL when it refuses an answer (the
        page is kept in ``refusals``)."""
        async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
            response = await browser.get(url)
            while True:
                if response.is_redirect:
                    location = response.url.join(response.headers["location"])
                    if not str(location).startswith(self.server_url):
                        return location
                    response = await browser.get(location)
                elif response.status_code == 200:
                    answer = self._answer(response)
                    response = await browser.post(response.url.copy_with(query=None), data=answer)
                else:
                    self.refusals.append(response.text)
                    return response.url

    def _answer(self, page: httpx.Response) -> dict[str, Any]:
        text = page.text
        hidden = {name: html.unescape(value) for name, value in _HIDDEN.findall(text)}
        form: dict[str, Any] = {"csrf_token": csrf_of(text), **hidden}
        if page.url.path == "/console/sign-in":
            return {**form, "email": self.email, "password": PASSWORD}
        assert page.url.path == "/console/oauth/consent", page.url
        self.consent_pages.append(text)
        scopes = ticked_scopes(text) if self.scopes is None else self.scopes
        budget = {f"budget.{window}": amount for window, amount in self.budget.items()}
        return {**form, **budget, "scope": scopes, "decision": "allow" if self.allow else "deny"}


class MemoryStorage:
    """The SDK's token storage, kept in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def mcp_host(
    person: Person, storage: MemoryStorage, *, client_metadata_url: str | None = None
) -> OAuthClientProvider:
    """An MCP host's OAuth: it registers (or names its metadata document), sends ``person`` to authorize
    and hands the code it comes back with to the SDK."""
    answer: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        answer.clear()
        answer.update((await person.authorize(url)).params)

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=answer.get("code", ""), state=answer.get("state"), iss=answer.get("iss")
        )

    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(REDIRECT_URI)],
        client_name="Test MCP host",
        token_endpoint_auth_method="none" if client_metadata_url else None,
    )
    return OAuthClientProvider(
        person.server_url + MCP_PATH,
        metadata,
        storage,
        redirect_handler,
        callback_handler,
        client_metadata_url=client_metadata_url,
    )


@asynccontextmanager
async def mcp_session(server_url: str, auth: OAuthClientProvider) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(streamable_http_client(server_url + MCP_PATH, http_client=http)) as client,
    ):
        yield client


@dataclass
class ClientDocument:
    """A client metadata document served over https by a CA of the test's own."""

    url: str
    ca_file: Path
    host: str  # as AISERVE_OAUTH_CLIENT_FETCH_ALLOWED_HOSTS names it
    fetches: int = 0


@asynccontextmanager
async def client_document(tmp_path: Path, **extra: Any) -> AsyncIterator[ClientDocument]:
    """Serve ``https://localhost:<port>/client.json``: a public client's metadata naming its own URL,
    ``REDIRECT_URI`` and ``extra`` fields."""
    ca = trustme.CA()
    certificate = ca.issue_cert("localhost")
    ca_file, cert_file, key_file = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    for blob in certificate.cert_chain_pems:
        blob.write_to_path(str(cert_file), append=True)
    port = free_port()
    document = ClientDocument(f"https://localhost:{port}/client.json", ca_file, f"localhost:{port}")

    async def serve_document(request: Request) -> JSONResponse:
        document.fetches += 1
        body = {"client_id": document.url, "client_name": "Documented host", "redirect_uris": [REDIRECT_URI]}
        return JSONResponse({**body, "token_endpoint_auth_method": "none", **extra})

    app = Starlette(routes=[Route("/client.json", serve_document)])
    async with serve(app, port, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)):
        yield document


@dataclass
class OAuthServer:
    url: str
    http: httpx.AsyncClient
    document: ClientDocument


@asynccontextmanager
async def oauth_server(settings: Settings, tmp_path: Path) -> AsyncIterator[OAuthServer]:
    """The app served on the port its settings name (its issuer), trusting ``client_document``'s host."""
    async with client_document(tmp_path) as document:
        port = free_port()
        tuned = settings.model_copy(
            update={
                "port": port,
                "oauth_client_fetch_allowed_hosts": [document.host],
                "oauth_client_fetch_ca_file": document.ca_file,
            }
        )
        async with (
            serve(create_app(tuned), port) as url,
            httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http,
        ):
            yield OAuthServer(url, http, document)


# A flow by hand, for what the server must refuse.


def pkce() -> PKCEParameters:
    return PKCEParameters.generate()


async def register(http: httpx.AsyncClient, **metadata: Any) -> dict[str, Any]:
    """Register a public client (``token_endpoint_auth_method`` none) with ``REDIRECT_URI``."""
    body = {
        "redirect_uris": [REDIRECT_URI],
        "client_name": "Hand-made host",
        "token_endpoint_auth_method": "none",
    }
    response = await http.post("/register", json={**body, **metadata})
    assert response.status_code == 201, response.text
    registered = response.json()
    assert isinstance(registered, dict)
    return registered


def authorize_url(server_url: str, client_id: str, challenge: str, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "state-1",
        "resource": server_url + MCP_PATH,
        **params,
    }
    return f"{server_url}/authorize?{urlencode(query)}"


async def exchange(
    http: httpx.AsyncClient, client_id: str, code: str, verifier: str, **form: str
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        **form,
    }
    return await http.post("/token", data=data)


async def refresh(http: httpx.AsyncClient, client_id: str, refresh_token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh_token}
    return await http.post("/token", data=data)
