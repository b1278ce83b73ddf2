"""This server's OAuth identifiers: the issuer (the authorization server) and the protected resources.

Both come from ``AISERVE_PUBLIC_URL`` (else the address the server listens on), which for OAuth must be an
https origin, or plain http on loopback for local use (the MCP SDK's rule for issuers); otherwise OAuth is
off. The MCP endpoint is the resource clients name (RFC 8707); the bare origin names the whole API. A token
issued for either works on every surface (MCP, A2A, REST, WebSocket)."""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.auth.routes import validate_issuer_url
from pydantic import AnyHttpUrl, ConfigDict, TypeAdapter

from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from aiserve_mcp.tools.upload_links import public_base_url

PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
# An origin stays as written (no trailing slash added): issuers are compared as strings (RFC 8414 §3.3).
_URL = TypeAdapter(AnyHttpUrl, config=ConfigDict(url_preserve_empty_path=True))


def http_url(text: str) -> AnyHttpUrl:
    return _URL.validate_python(text)


@dataclass(frozen=True)
class OAuthUrls:
    issuer: str  # also the origin, without a trailing slash
    enabled: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> OAuthUrls:
        base = public_base_url(settings)
        try:
            validate_issuer_url(http_url(base))
        except ValueError:
            return cls(base, enabled=False)
        return cls(base, enabled=True)

    @property
    def mcp_resource(self) -> str:
        return self.issuer + MCP_PATH

    @property
    def resources(self) -> tuple[str, ...]:
        """Every resource identifier of this server, the default (the MCP endpoint) first; none when off."""
        return (self.mcp_resource, self.issuer) if self.enabled else ()

    @property
    def resource_metadata(self) -> str:
        """The MCP endpoint's protected resource metadata (RFC 9728, path-suffixed form)."""
        return self.issuer + PROTECTED_RESOURCE_PATH + MCP_PATH
