"""Outbound HTTP shared by the marketplace clients: timeouts, bounded retries with backoff, error mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from aiserve_mcp.gpu.providers.base import ProviderFailed, ProviderNotConfigured, ProviderRateLimited
from aiserve_mcp.worker.bundle import BundleUnavailable, WorkerLaunch

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` when the body is not JSON or not an object (a marketplace's error
    pages and proxies answer so)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: httpx.Response, fallback: float) -> float:
    header = response.headers.get("retry-after")
    try:
        return min(float(header), MAX_RETRY_AFTER_S) if header else fallback
    except ValueError:
        return fallback


async def send(
    client: httpx.AsyncClient,
    provider: str,
    method: str,
    url: str,
    *,
    attempts: int = 3,
    backoff_s: float = 0.15,
    final: Callable[[httpx.Response], bool] = lambda _: False,
    idempotent: bool = True,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request, retrying 429/502/503/504 and connection failures up to ``attempts`` times
    (``backoff_s`` growing 1.5x, or the server's ``Retry-After``). A response for which ``final`` is true
    (a daily quota, say) is never retried. Other statuses are returned for the caller to interpret. When
    not ``idempotent`` (a create), only failures to connect are retried: a request that may have reached
    the provider is never sent twice.

    Raises ``ProviderRateLimited`` when still refused with 429, ``ProviderFailed`` for anything else that
    never produced a usable answer.
    """
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            reached = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            if attempt == attempts or (reached and not idempotent):
                what = (
                    "did not answer in time"
                    if isinstance(exc, httpx.TimeoutException)
                    else f"cannot be reached: {type(exc).__name__}"
                )
                raise ProviderFailed(f"{provider} {what}", {"provider": provider}) from None
        else:
            if response.status_code not in RETRY_STATUSES:
                return response
            wait = _retry_after(response, delay)
            if final(response) or attempt == attempts:
                if response.status_code == 429:
                    raise ProviderRateLimited(
                        f"{provider} refused the request: rate limit or quota reached",
                        retry_after_s=max(1, round(wait)),
                        details={"provider": provider, "upstream": response.text[:200]},
                    )
                raise ProviderFailed(
                    f"{provider} answered HTTP {response.status_code}",
                    {"provider": provider, "upstream_status": response.status_code},
                )
            delay = wait
        log.info("%s %s %s: retry %d in %.2fs", provider, method, url, attempt, delay)
        await anyio.sleep(delay)
        delay *= 1.5
    raise AssertionError("unreachable")  # the loop returns or raises on its last attempt


class HttpMarketplace:
    """What the HTTP marketplace clients share: the caller's ``httpx.AsyncClient`` (the caller closes it),
    a base URL, an API key whose absence means "not configured" (``not_configured`` says which setting to
    set), and the ``launch`` that writes the start-up script a rented machine runs (without it, nothing
    can be rented)."""

    name: str
    not_configured: str

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        launch: WorkerLaunch | None = None,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._launch = launch

    def _require(self) -> None:
        if not self._key:
            raise ProviderNotConfigured(self.not_configured, {"provider": self.name})

    async def _start_script(self) -> str:
        """The script a rented machine runs to fetch, check and start the worker."""
        if self._launch is None:
            raise BundleUnavailable(
                "cannot start a worker on a rented machine: the worker start-up is not configured "
                "(AISERVE_PUBLIC_URL)",
                {"setting": "AISERVE_PUBLIC_URL", "provider": self.name},
            )
        return await self._launch.script(self._base)

    async def check_worker_start(self) -> None:
        self._require()
        await self._start_script()

    @property
    def configured(self) -> bool:
        return bool(self._key)

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""
