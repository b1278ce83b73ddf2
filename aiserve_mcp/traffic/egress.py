"""Where the proxy may connect: an instance's recorded endpoint, checked and pinned to the address checked.

A provider's record could name any host, so every address the name resolves to is checked: loopback,
private, link-local (cloud metadata at 169.254.169.254), multicast and reserved ranges are refused unless
the instance is this host's own worker (which must then be on loopback) or ``AISERVE_PROXY_ALLOW_PRIVATE``
is set for instances on a private network. The connection then goes to the address that was checked, so
a name that resolves differently a moment later (DNS rebinding) changes nothing.
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


def _public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def vet_endpoint(endpoint: str, *, loopback_only: bool, allow_private: bool) -> Upstream:
    """Resolve and check ``endpoint`` (``http://host:port``); raise ``Forbidden`` when it may not be used."""
    url = httpx.URL(endpoint)
    if url.scheme != "http" or not url.host or url.userinfo:
        raise Forbidden("the instance's endpoint is not a plain http://host:port address")
    port = url.port or 80
    try:
        infos = await anyio.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UpstreamFailed(f"cannot resolve the instance's address {url.host!r}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise UpstreamFailed(f"the instance's address {url.host!r} resolves to nothing")
    if loopback_only:
        allowed = all(a.is_loopback for a in addresses)
    else:
        allowed = allow_private or all(_public(a) for a in addresses)
    if not allowed:
        raise Forbidden(
            "the instance's endpoint is a loopback, private, link-local or reserved address; only this "
            "host's own workers may be there (or set AISERVE_PROXY_ALLOW_PRIVATE for a private network)"
        )
    address = addresses[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    return Upstream(httpx.URL(f"http://{shown}:{port}"), f"{url.host}:{port}")
