"""The OAuth routes, all from the MCP SDK: authorization server metadata (RFC 8414), registration
(RFC 7591), ``/authorize``, ``/token`` and ``/revoke``, and the protected resource metadata (RFC 9728) of
the MCP endpoint (``/.well-known/oauth-protected-resource/api/v1/mcp``) and of the whole API (the bare
``/.well-known/oauth-protected-resource``). The metadata the SDK builds is extended to say what this
server also supports: public clients (``none`` at the token endpoint), Client ID Metadata Documents and
the ``iss`` parameter of the authorization response (RFC 9207).

``BearerChallenge`` adds ``WWW-Authenticate: Bearer resource_metadata="..."`` to every 401 of the MCP
endpoint (with ``error="invalid_token"`` when a credential was sent), where clients start discovery."""

from __future__ import annotations

import logging

from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.routes import (
    REGISTRATION_PATH,
    build_metadata,
    cors_middleware,
    create_auth_routes,
    create_protected_resource_routes,
)
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiserve_mcp.accounts.oauth import OAuthService
from aiserve_mcp.core.errors import RateLimited
from aiserve_mcp.core.principal import SCOPES, WITHHELD_BY_DEFAULT
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from aiserve_mcp.protocols.oauth.provider import GrantProvider
from aiserve_mcp.protocols.oauth.urls import OAuthUrls, http_url
from aiserve_mcp.protocols.prelude import client_address, error_response, services_of

log = logging.getLogger(__name__)
METADATA_PATH = "/.well-known/oauth-authorization-server"
TOKEN_AUTH_METHODS = ["client_secret_post", "client_secret_basic", "none"]


def oauth_routes(oauth: OAuthService, urls: OAuthUrls, consent_path: str) -> list[BaseRoute]:
    """Every OAuth route, or none (logged) when the issuer URL cannot serve OAuth."""
    if not urls.enabled:
        log.warning(
            "OAuth for MCP is off: the issuer %s must be https (or http on loopback); set AISERVE_PUBLIC_URL",
            urls.issuer,
        )
        return []
    issuer = http_url(urls.issuer)
    registration = ClientRegistrationOptions(
        enabled=True, valid_scopes=sorted(SCOPES), default_scopes=sorted(SCOPES)
    )
    revocation = RevocationOptions(enabled=True)
    metadata = build_metadata(issuer, None, registration, revocation).model_copy(
        update={
            "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
        }
    )
    routes: list[BaseRoute] = []
    for route in create_auth_routes(
        GrantProvider(oauth, consent_path),
        issuer,
        client_registration_options=registration,
        revocation_options=revocation,
    ):
        if route.path == METADATA_PATH:
            route = Route(
                METADATA_PATH,
                cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
                methods=["GET", "OPTIONS"],
            )
        elif route.path == REGISTRATION_PATH:
            route = Route(REGISTRATION_PATH, PerAddressLimit(route.app), methods=list(route.methods or ()))
        routes.append(route)
    default_scopes = sorted(SCOPES.keys() - WITHHELD_BY_DEFAULT)
    for resource in urls.resources:
        routes += create_protected_resource_routes(
            http_url(resource), [issuer], scopes_supported=default_scopes, resource_name="aiserve"
        )
    return routes


class PerAddressLimit:
    """In front of registration, which anyone may call: ``AISERVE_AUTH_RATE_LIMIT`` requests per window
    and address, as for logins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = services_of(scope)
        address = client_address(scope, services.settings.trust_forwarded_for) or "unknown"
        if scope["method"] == "POST":
            try:
                await services.rate_limiter.spend(
                    f"oauth-register:{address}", services.settings.auth_rate_limit
                )
            except RateLimited as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BearerChallenge:
    """Names the protected resource metadata in the MCP endpoint's 401 answers (replacing their plain
    ``WWW-Authenticate``), keeping their JSON error body."""

    def __init__(self, app: ASGIApp, urls: OAuthUrls) -> None:
        self.app = app
        self._metadata = urls.resource_metadata if urls.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._metadata is None or scope["type"] != "http" or not scope["path"].startswith(MCP_PATH):
            await self.app(scope, receive, send)
            return
        sent_credential = "authorization" in Headers(scope=scope) or "x-api-key" in Headers(scope=scope)
        error = 'error="invalid_token", ' if sent_credential else ""
        challenge = f'Bearer realm="aiserve", {error}resource_metadata="{self._metadata}"'

        async def challenged(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                MutableHeaders(scope=message)["WWW-Authenticate"] = challenge
            await send(message)

        await self.app(scope, receive, challenged)
