"""Small documents fetched from https URLs that callers name (an OAuth client's metadata document), under
the egress rules of ``traffic.egress``: public addresses only unless the operator allows the host, no
redirects followed, a size limit and a time limit for the whole fetch."""

from __future__ import annotations

from collections.abc import Collection

import anyio
import httpx

from aiserve_mcp.core.errors import UpstreamFailed, UpstreamTimeout, ValidationFailed
from aiserve_mcp.traffic.egress import AllowedHosts, checked_url, pinned_target


class DocumentFetcher:
    """Fetches documents of at most ``max_bytes`` within ``timeout_s`` with ``client``
    (``traffic.egress.isolated_client``, which it owns and closes in ``aclose``). ``what`` names the
    documents in messages; ``allowed_hosts`` come from the setting named ``setting``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        allowed_hosts: Collection[str],
        *,
        setting: str,
        what: str,
        timeout_s: float,
        max_bytes: int,
    ) -> None:
        self._client = client
        self._allowed = AllowedHosts(allowed_hosts, setting)
        self._what = what
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes

    async def fetch(self, url: str) -> bytes:
        """The body of a 200 answer to ``GET url``. ``ValidationFailed`` for a URL that is not https,
        ``Forbidden`` for a host that may not be reached, ``UpstreamFailed`` for any other answer (a
        redirect included), a body over the size limit or a server that cannot be reached,
        ``UpstreamTimeout`` past the time limit."""
        checked = checked_url(url, f"the {self._what} URL", ValidationFailed)
        if checked.scheme != "https":
            raise ValidationFailed(f"the {self._what} URL must be an https:// URL")
        with anyio.move_on_after(self._timeout_s):
            target, host = await pinned_target(checked, self._allowed, f"{self._what}s")
            headers = {"Accept": "application/json", **host}
            try:
                async with self._client.stream("GET", target, headers=headers) as response:
                    if response.status_code != 200:
                        raise UpstreamFailed(f"the {self._what} URL answered HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > self._max_bytes:
                            raise UpstreamFailed(f"the {self._what} is larger than {self._max_bytes} bytes")
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise UpstreamFailed(f"{checked.host!r} cannot be reached: {type(exc).__name__}") from None
        raise UpstreamTimeout(f"the {self._what} did not arrive within {self._timeout_s:g} s")

    async def aclose(self) -> None:
        await self._client.aclose()
