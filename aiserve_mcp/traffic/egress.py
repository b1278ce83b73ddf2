"""Where this server may connect: every address a name resolves to is checked, and the connection is pinned
to the address checked.

Loopback, private, link-local (cloud metadata at 169.254.169.254), multicast and reserved ranges are not
``public``. The proxy's ``vet_endpoint`` refuses an instance's recorded endpoint there unless the instance
is this host's own worker (which must then be on loopback) or ``AISERVE_PROXY_ALLOW_PRIVATE`` is set for
instances on a private network; the model fetcher (``serving.fetch``) checks each URL it follows with the
same ``resolve`` and ``public``. The connection then goes to the address that was checked, so a name that
resolves differently a moment later (DNS rebinding) changes nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import anyio
import httpx

from aiserve_mcp.core.errors import Forbidden, UpstreamFailed

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
