"""The MCP SDK's ``OAuthAuthorizationServerProvider`` over ``accounts.oauth.OAuthService``: the SDK's
handlers speak the protocol (metadata, registration, authorization, token, revocation, PKCE, redirect URI
checks); this class only maps their calls onto our clients, grants and tokens."""

from __future__ import annotations

import logging
from typing import TypeVar, cast
from urllib.parse import urlencode

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationErrorCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    TokenError,
    TokenErrorCode,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl, ValidationError

from aiserve_mcp.accounts.oauth import GrantUse, IssuedTokens, OAuthService
from aiserve_mcp.accounts.oauth_requests import OAuthRefused
from aiserve_mcp.core.principal import SCOPES

log = logging.getLogger(__name__)
_REGISTRATION_ONLY = {"client_id", "client_secret", "client_secret_expires_at", "issuer"}


class GrantCode(AuthorizationCode):
    grant_id: str


class GrantRefreshToken(RefreshToken):
    grant_id: str


class GrantAccessToken(AccessToken):
    grant_id: str


Held = TypeVar("Held", GrantRefreshToken, GrantAccessToken)


def _held(kind: type[Held], token: str, use: GrantUse) -> Held:
    """``token`` as the SDK's model ``kind``, from what our service knows of its grant."""
    return kind(
        token=token,
        client_id=use.client_id,
        scopes=use.scopes,
        expires_at=int(use.expires_at.timestamp()),
        resource=use.resource,
        subject=use.user_id,
        grant_id=use.grant_id,
    )


def _token(tokens: IssuedTokens) -> OAuthToken:
    return OAuthToken(
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
        scope=" ".join(tokens.scopes),
        refresh_token=tokens.refresh_token,
    )


def _token_error(refusal: OAuthRefused) -> TokenError:
    return TokenError(cast(TokenErrorCode, refusal.error), refusal.message)


class GrantProvider(OAuthAuthorizationServerProvider[GrantCode, GrantRefreshToken, GrantAccessToken]):
    """Clients from ``oauth.clients``; ``authorize`` keeps the request and sends the browser to the
    consent page at ``consent_path`` (``?request=<id>``), which decides it."""

    def __init__(self, oauth: OAuthService, consent_path: str) -> None:
        self._oauth = oauth
        self._consent_path = consent_path

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        record = await self._oauth.clients.get(client_id)
        if record is None:
            return None
        # A metadata document that names no scope may ask for any of ours (the consent page decides).
        info = {"scope": " ".join(sorted(SCOPES)), **record.document, "client_id": record.client_id}
        try:
            return OAuthClientInformationFull.model_validate({**info, "client_secret": record.client_secret})
        except ValidationError as exc:
            log.info("client %s has metadata that cannot be used: %s", client_id, exc)
            return None

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        """Keep the registration; the secret handed out is the one derived for this client id."""
        document = client_info.model_dump(mode="json", exclude_none=True, exclude=_REGISTRATION_ONLY)
        confidential = client_info.client_secret is not None
        client_info.client_secret = await self._oauth.clients.register(
            client_info.client_id, document, confidential
        )

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        try:
            request_id = await self._oauth.requests.start(
                client.client_id,
                str(params.redirect_uri),
                params.redirect_uri_provided_explicitly,
                params.code_challenge,
                params.state,
                params.scopes,
                params.resource,
            )
        except OAuthRefused as exc:
            raise AuthorizeError(cast(AuthorizationErrorCode, exc.error), exc.message) from None
        return f"{self._consent_path}?{urlencode({'request': request_id})}"

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> GrantCode | None:
        use = await self._oauth.code(client.client_id, authorization_code)
        if use is None:
            return None
        return GrantCode(
            code=authorization_code,
            scopes=use.scopes,
            expires_at=use.expires_at.timestamp(),
            client_id=use.client_id,
            code_challenge=use.code_challenge,
            redirect_uri=AnyUrl(use.redirect_uri),
            redirect_uri_provided_explicitly=use.redirect_uri_explicit,
            resource=use.resource,
            subject=use.user_id,
            grant_id=use.grant_id,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: GrantCode
    ) -> OAuthToken:
        try:
            return _token(await self._oauth.exchange_code(authorization_code.code))
        except OAuthRefused as exc:
            raise _token_error(exc) from None

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> GrantRefreshToken | None:
        use = await self._oauth.refresh_token(client.client_id, refresh_token)
        return None if use is None else _held(GrantRefreshToken, refresh_token, use)

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: GrantRefreshToken, scopes: list[str]
    ) -> OAuthToken:
        try:
            return _token(await self._oauth.exchange_refresh_token(refresh_token.token, scopes))
        except OAuthRefused as exc:
            raise _token_error(exc) from None

    async def load_access_token(self, token: str) -> GrantAccessToken | None:
        use = await self._oauth.access_token(token)
        return None if use is None else _held(GrantAccessToken, token, use)

    async def revoke_token(self, token: GrantAccessToken | GrantRefreshToken) -> None:
        """Revoking either token ends the whole grant, as RFC 7009 lets a server do."""
        await self._oauth.revoke(token.grant_id, "revoked_by_client")
