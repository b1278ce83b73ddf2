"""Downloading a model file from a URL an agent gives, under the egress rules the proxy uses.

Only ``http`` and ``https`` URLs without a user name or password. Before the first request and after every
redirect (at most ``MAX_REDIRECTS``, followed here, never by httpx) the host is resolved and every address
it resolves to must be public (``traffic.egress.pinned_target``: not loopback, private, link-local such as
the cloud metadata address, multicast or reserved) unless the operator names the host in
``AISERVE_MODEL_FETCH_ALLOWED_HOSTS`` (a model store inside their network, say). An ``http`` request then
goes to the address that was checked, with the URL's Host header, so a name that resolves elsewhere a
moment later (DNS rebinding) changes nothing; an ``https`` one goes by name and TLS checks the certificate
against that name, as the proxy does for io.net.

The body is streamed: ``Download.chunks`` reads it as the caller consumes it, and the whole download (every
hop and the body) must end within ``timeout_s``, so a server that stalls or trickles is cut off then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage

import anyio
import httpx

from aiserve_mcp.core.errors import UpstreamFailed, UpstreamTimeout, ValidationFailed
from aiserve_mcp.traffic.egress import AllowedHosts, checked_url, isolated_client, pinned_target

SETTING = "AISERVE_MODEL_FETCH_ALLOWED_HOSTS"
MAX_REDIRECTS = 5
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # between two reads of a body that is still coming


def fetch_client() -> httpx.AsyncClient:
    """The client a ``ModelFetcher`` needs: ``traffic.egress.isolated_client``, so long downloads take no
    connection from the GPU providers' calls and nothing one download's server sets is sent on another's."""
    return isolated_client()


@dataclass
class Download:
    """A download under way: the answer's headers are in, the body streams from ``chunks``."""

    url: str  # the final URL, after redirects
    filename: str | None  # Content-Disposition's file name or the final URL's last path segment; a hint
    total_bytes: int | None  # Content-Length, when the server sent one
    _response: httpx.Response = field(repr=False)
    _deadline: float = field(repr=False)  # anyio.current_time() by which the download must end
    _timeout_s: float = field(repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, read as it is consumed: nothing is read ahead of the caller, and nothing after it
        stops. ``UpstreamTimeout`` past the deadline, ``UpstreamFailed`` when the connection breaks."""
        body = self._response.aiter_bytes()
        while True:
            with anyio.CancelScope(deadline=self._deadline) as scope:
                try:
                    chunk = await anext(body)
                except StopAsyncIteration:
                    return
                except httpx.TimeoutException:
                    raise UpstreamTimeout("the model URL's server stopped sending the file") from None
                except httpx.HTTPError as exc:
                    raise UpstreamFailed(f"the download broke off: {type(exc).__name__}") from None
            if scope.cancelled_caught:
                raise _too_slow(self._timeout_s)
            yield chunk


class ModelFetcher:
    """Downloads model files from URLs; owns ``client`` (``fetch_client()``) and closes it in ``aclose``."""

    def __init__(self, client: httpx.AsyncClient, allowed_hosts: Collection[str], timeout_s: float) -> None:
        self._client = client
        self._allowed = AllowedHosts(allowed_hosts, SETTING)
        self._timeout_s = timeout_s
        self._timeouts = httpx.Timeout(
            min(READ_TIMEOUT_S, timeout_s), connect=min(CONNECT_TIMEOUT_S, timeout_s)
        )

    @asynccontextmanager
    async def download(self, url: str) -> AsyncIterator[Download]:
        """Request ``url``, following its redirects, and yield the answer with its body still to read; the
        connection is closed when the block ends. ``ValidationFailed`` for a URL that is not plain http(s),
        ``Forbidden`` for an address that may not be reached, ``UpstreamFailed`` for anything but a 2xx
        answer, too many redirects or a server that cannot be reached, ``UpstreamTimeout`` past
        ``timeout_s``."""
        deadline = anyio.current_time() + self._timeout_s
        current = checked_url(url, "the model URL", ValidationFailed)
        redirects = 0
        while True:
            response = await self._request(current, deadline)
            if not response.is_redirect:
                break
            await response.aclose()
            if redirects == MAX_REDIRECTS:
                raise UpstreamFailed(f"the model URL redirected more than {MAX_REDIRECTS} times")
            redirects += 1
            current = checked_url(response.headers["location"], "a redirect", UpstreamFailed, current)
        try:
            if not response.is_success:
                raise UpstreamFailed(f"the model URL answered HTTP {response.status_code}")
            yield Download(
                str(current),
                _filename(current, response.headers),
                _length(response.headers),
                response,
                deadline,
                self._timeout_s,
            )
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, url: httpx.URL, deadline: float) -> httpx.Response:
        """Check where ``url`` goes and send a GET there; its answer's headers, the body left unread."""
        with anyio.CancelScope(deadline=deadline) as scope:
            target, host = await pinned_target(url, self._allowed, "models")
            headers = {"Accept-Encoding": "identity", **host}  # so Content-Length is the file's length
            request = self._client.build_request("GET", target, headers=headers, timeout=self._timeouts)
            try:
                return await self._client.send(request, stream=True, follow_redirects=False)
            except httpx.TimeoutException:
                raise UpstreamTimeout(f"{url.host!r} did not answer in time") from None
            except httpx.HTTPError as exc:
                raise UpstreamFailed(f"{url.host!r} cannot be reached: {type(exc).__name__}") from None
        assert scope.cancelled_caught
        raise _too_slow(self._timeout_s)


def _too_slow(timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"the model file did not download within {timeout_s:g} s (AISERVE_MODEL_FETCH_TIMEOUT_S)"
    )


def _filename(url: httpx.URL, headers: httpx.Headers) -> str | None:
    """Content-Disposition's file name (``filename*`` included) or else the URL's last path segment, without
    any directory either names."""
    named = url.path
    disposition = headers.get("content-disposition")
    if disposition:
        message = EmailMessage()
        message["content-disposition"] = disposition
        named = message.get_filename() or named
    return named.replace("\\", "/").rsplit("/", 1)[-1] or None


def _length(headers: httpx.Headers) -> int | None:
    """Content-Length, unless the body is encoded (then it counts the encoded bytes, not the file's)."""
    length = headers.get("content-length")
    if length is None or not length.isdigit() or headers.get("content-encoding", "identity") != "identity":
        return None
    return int(length)
