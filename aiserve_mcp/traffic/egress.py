"""Where this server may connect: every address a name resolves to is checked, and the connection is pinned
to the address checked.

Loopback, private, link-local (cloud metadata at 169.254.169.254), multicast and reserved ranges are not
``public``. The proxy's ``vet_endpoint`` refuses an instance's recorded endpoint there unless the instance
is this host's own worker (which must then be on loopback) or ``AISERVE_PROXY_ALLOW_PRIVATE`` is set for
instances on a private network. URLs that callers name (a model to download, ``serving.fetch``; an OAuth
client's metadata document, ``traffic.documents``) go through ``checked_url`` and ``pinned_target``: every
address the host resolves to must be public unless the operator allows the host by name (``AllowedHosts``).
An ``http`` connection then goes to the address that was checked, so a name that resolves differently a
moment later (DNS rebinding) changes nothing; an ``https`` one goes by name and TLS checks the certificate
against that name.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import anyio
import httpx

from aiserve_mcp.core.errors import Forbidden, UpstreamFailed, ValidationFailed

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Upstream:
    base_url: httpx.URL  # scheme://<checked address>:port
    host_header: str  # the name the instance answers to


def public(address: IpAddress) -> bool:
    """Whether ``address`` is on the public internet: not loopback, private, link-local, multicast or
    reserved (an IPv4-mapped IPv6 address is judged as the IPv4 address it maps)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int, what: str) -> list[IpAddress]:
    """Every address ``host`` resolves to, in the resolver's order; ``UpstreamFailed`` naming ``what`` (the
    instance's address, say) when it resolves to nothing."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UpstreamFailed(f"cannot resolve {what} {host!r}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise UpstreamFailed(f"{what} {host!r} resolves to nothing")
    return addresses


async def vet_endpoint(endpoint: str, *, loopback_only: bool, allow_private: bool) -> Upstream:
    """Resolve and check ``endpoint`` (``http://host:port``); raise ``Forbidden`` when it may not be used."""
    url = httpx.URL(endpoint)
    if url.scheme != "http" or not url.host or url.userinfo:
        raise Forbidden("the instance's endpoint is not a plain http://host:port address")
    port = url.port or 80
    addresses = await resolve(url.host, port, "the instance's address")
    if loopback_only:
        allowed = all(a.is_loopback for a in addresses)
    else:
        allowed = allow_private or all(public(a) for a in addresses)
    if not allowed:
        raise Forbidden(
            "the instance's endpoint is a loopback, private, link-local or reserved address; only this "
            "host's own workers may be there (or set AISERVE_PROXY_ALLOW_PRIVATE for a private network)"
        )
    address = addresses[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    return Upstream(httpx.URL(f"http://{shown}:{port}"), f"{url.host}:{port}")


def isolated_client(ca_file: Path | None = None) -> httpx.AsyncClient:
    """A client for URLs that callers name: its own connections, no proxy settings from the environment,
    no redirects followed for it, and no cookie kept, so nothing one server sets is sent to another.
    ``ca_file`` adds a PEM bundle of certificate authorities to the usual ones (a CA of the operator's)."""
    no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = httpx.create_ssl_context(trust_env=False)
        verify.load_verify_locations(cafile=ca_file)
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, cookies=no_cookies, verify=verify)


class AllowedHosts:
    """The hosts an operator allows on their own network, in the setting named ``setting``: each ``host``
    (any port) or ``host:port``; names compare case-insensitively, IP literals by address (an IPv6 one as
    ``[::1]`` or ``[::1]:8080``)."""

    def __init__(self, entries: Collection[str], setting: str) -> None:
        self.setting = setting
        self._entries = frozenset(_entry(e, setting) for e in entries)

    def admit(self, url: httpx.URL) -> bool:
        host = _host_key(url.raw_host.decode("ascii"))
        return (host, None) in self._entries or (host, url_port(url)) in self._entries


def checked_url(
    text: str, what: str, error: type[ValidationFailed | UpstreamFailed], base: httpx.URL | None = None
) -> httpx.URL:
    """``text`` as a URL (relative to ``base`` when given, as a redirect's Location may be), when it is a
    plain http(s) URL; ``error`` naming ``what`` is wrong with it otherwise."""
    try:
        url = base.join(text) if base is not None else httpx.URL(text)
    except httpx.InvalidURL:
        raise error(f"{what} is not a valid URL") from None
    if url.scheme not in DEFAULT_PORTS:
        instead = f"{url.scheme}:" if url.scheme else "a relative URL"
        raise error(f"{what} must be an http:// or https:// URL, not {instead}")
    if url.userinfo:
        raise error(f"{what} must not carry a user name or password")
    if not url.host:
        raise error(f"{what} names no host")
    return url


async def pinned_target(url: httpx.URL, allowed: AllowedHosts, what: str) -> tuple[httpx.URL, dict[str, str]]:
    """Where to send a request for ``url`` (a ``checked_url``) and the Host header that goes with it, once
    every address its host resolves to is public or the host is allowed; ``Forbidden`` naming ``what`` (the
    things fetched, "models" say) otherwise."""
    host = url.raw_host.decode("ascii")
    addresses = await resolve(host, url_port(url), "the host of the URL")
    if not allowed.admit(url) and not all(public(a) for a in addresses):
        raise Forbidden(
            f"{url.host!r} is at a loopback, private, link-local or reserved address; {what} are fetched "
            f"from the public internet only (an operator may allow a host on their network in "
            f"{allowed.setting})"
        )
    if url.scheme == "https":
        return url, {}
    return url.copy_with(host=str(addresses[0])), {"Host": url.netloc.decode("ascii")}


def url_port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS[url.scheme]


def _host_key(host: str) -> str:
    """An IP literal in its one spelling (``0:0::1`` is ``::1``); a name as httpx spells it, lower case."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _entry(text: str, setting: str) -> tuple[str, int | None]:
    """``(host, port)`` of one allowed-hosts entry; port None for any port."""
    entry = text.strip()
    try:
        return str(ipaddress.ip_address(entry)), None  # a bare IPv6 address, say
    except ValueError:
        pass
    try:
        parsed = httpx.URL(f"//{entry}")
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or not parsed.host or parsed.userinfo or parsed.path != "/" or parsed.query:
        raise ValueError(f"{setting}: {text!r} is not host or host:port")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"{setting}: {text!r} has no valid port")
    return _host_key(parsed.raw_host.decode("ascii")), parsed.port
