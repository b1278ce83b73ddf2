"""Traffic to a user's instances: pick one by the pool's strategy, forward a request, measure it.

A target is resolved only among the caller's own running contracts (by contract id, provider instance id
or pool name); the address always comes from the contract, never from the request, and is vetted by
``egress.vet_endpoint``. Hop-by-hop headers and the caller's credentials are never forwarded; the
instance's own worker token is added instead. Redirects are returned, not followed. Only idempotent
methods are retried, on another instance, after a connection failure or a 502/503/504.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from aiserve_mcp.errors import NotFound, ServiceUnavailable, UpstreamFailed, UpstreamTimeout, ValidationFailed
from aiserve_mcp.services.balancer import Backend, BackendLoad, Balancer, Outcome, Strategy
from aiserve_mcp.services.egress import Upstream, vet_endpoint
from aiserve_mcp.services.gpu_catalog import default_catalog
from aiserve_mcp.services.gpu_market import GpuMarket
from aiserve_mcp.services.lb_pools import PoolStore
from aiserve_mcp.storage.models import GpuContract

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "authorization", "cookie", "x-api-key"}
# The answer is relayed as a stream, so its length is the relay's to state (a HEAD answer's length
# describes a body that is not there).
RELAYED_NOT = HOP_BY_HOP | {"content-length"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUSES = frozenset({502, 503, 504})
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class ProxyCall:
    method: str
    path: str
    target: str | None = None
    payload: Any = None
    headers: Mapping[str, str] | None = None


@dataclass
class UpstreamReply:
    status_code: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    contract: GpuContract


@dataclass(frozen=True)
class InstanceLoad:
    contract: GpuContract
    weight: float
    load: BackendLoad


def weight_of(contract: GpuContract) -> float:
    """A contract's share for weighted round robin: its GPUs' dense FP16 TFLOPS from the catalog (all of
    them), or 1 for what the catalog does not know (CPU workers, unlisted GPUs)."""
    spec = default_catalog().match(contract.gpu_model, contract.vram_gb) if contract.num_gpus else None
    return spec.fp16_tflops * contract.num_gpus if spec is not None else 1.0


class Traffic:
    def __init__(
        self,
        market: GpuMarket,
        pools: PoolStore,
        balancer: Balancer,
        client: httpx.AsyncClient,
        *,
        timeout_s: float,
        allow_private: bool,
    ) -> None:
        self.pools = pools
        self._market = market
        self._balancer = balancer
        self._client = client
        self._timeout = httpx.Timeout(timeout_s)
        self._allow_private = allow_private

    async def running(self, user_id: str, pool: str | None = None) -> list[GpuContract]:
        """The caller's running instances with an endpoint (in ``pool`` when given), oldest first."""
        return [c for c in await self._market.serving(user_id) if pool is None or c.pool == pool]

    async def loads(self, user_id: str, pool: str) -> list[InstanceLoad]:
        contracts = await self.running(user_id, pool)
        measured = await self._balancer.loads(_key(user_id, pool), [c.id for c in contracts])
        return [InstanceLoad(c, weight_of(c), measured[c.id]) for c in contracts]

    async def _targets(self, user_id: str, target: str | None) -> tuple[str, list[GpuContract]]:
        """The pool and the candidate contracts for ``target`` (None: the default pool)."""
        running = await self.running(user_id)
        if target is None:
            target = "default"
        chosen = [c for c in running if target in (c.id, c.instance_id)]
        if chosen:
            return chosen[0].pool, chosen[:1]
        pool = [c for c in running if c.pool == target]
        if pool:
            return target, pool
        raise NotFound(f"no running instance or pool '{target}' of yours to send this to")

    @asynccontextmanager
    async def forward(self, user_id: str, call: ProxyCall) -> AsyncIterator[UpstreamReply]:
        """Send ``call`` to one of the caller's instances; yields the reply with its body still streaming."""
        pool, contracts = await self._targets(user_id, call.target)
        by_id = {c.id: c for c in contracts}
        backends = [Backend(c.id, weight_of(c)) for c in contracts]
        strategy: Strategy = await self.pools.strategy(user_id, pool)  # type: ignore[assignment]
        key = _key(user_id, pool)
        retries = call.method in IDEMPOTENT
        tried: set[str] = set()
        while True:
            backend = await self._balancer.pick(key, strategy, backends, exclude=tried)
            tried.add(backend.id)
            contract = by_id[backend.id]
            last_try = not retries or len(tried) >= min(len(backends), MAX_ATTEMPTS)
            request = await self._request(contract, call)
            async with self._balancer.track(key, backend.id) as outcome:
                try:
                    response = await self._client.send(request, stream=True, follow_redirects=False)
                except httpx.TimeoutException:
                    outcome.fail()
                    if last_try:
                        raise UpstreamTimeout("the instance did not answer in time") from None
                    continue
                except httpx.TransportError as exc:
                    outcome.fail()
                    if last_try:
                        raise UpstreamFailed(
                            f"the instance cannot be reached: {type(exc).__name__}"
                        ) from None
                    continue
                if response.status_code >= 500:
                    outcome.fail()
                    if response.status_code in RETRYABLE_STATUSES and not last_try:
                        await response.aclose()
                        continue
                try:
                    headers = [
                        (k, v) for k, v in response.headers.multi_items() if k.lower() not in RELAYED_NOT
                    ]
                    yield UpstreamReply(response.status_code, headers, response.aiter_raw(), contract)
                finally:
                    await response.aclose()
                return

    @asynccontextmanager
    async def instance(
        self, user_id: str, eligible: Callable[[GpuContract], bool], none_running: str
    ) -> AsyncIterator[tuple[GpuContract, str, Outcome]]:
        """One of the caller's running instances that ``eligible`` accepts, picked by the default pool's
        strategy and tracked while the block runs: yields the contract, its vetted base URL and the outcome
        to mark a failure on. ``ServiceUnavailable(none_running)`` when no instance qualifies."""
        contracts = [c for c in await self.running(user_id) if eligible(c)]
        if not contracts:
            raise ServiceUnavailable(none_running)
        by_id = {c.id: c for c in contracts}
        strategy: Strategy = await self.pools.strategy(user_id, "default")  # type: ignore[assignment]
        key = _key(user_id, "default")
        backend = await self._balancer.pick(key, strategy, [Backend(c.id, weight_of(c)) for c in contracts])
        contract = by_id[backend.id]
        upstream = await self._vet(contract)
        async with self._balancer.track(key, backend.id) as outcome:
            yield contract, str(upstream.base_url), outcome

    async def _vet(self, contract: GpuContract) -> Upstream:
        assert contract.endpoint is not None
        return await vet_endpoint(
            contract.endpoint, loopback_only=contract.provider == "local", allow_private=self._allow_private
        )

    async def _request(self, contract: GpuContract, call: ProxyCall) -> httpx.Request:
        upstream = await self._vet(contract)
        headers = {k: v for k, v in (call.headers or {}).items() if k.lower() not in NOT_FORWARDED}
        headers["Host"] = upstream.host_header
        headers["Accept-Encoding"] = "identity"  # relayed byte for byte; MCP callers get it decoded as is
        if contract.access_token:
            headers["Authorization"] = f"Bearer {contract.access_token}"
        url = upstream.base_url.join(call.path)
        if (url.host, url.port) != (upstream.base_url.host, upstream.base_url.port):
            raise ValidationFailed("path must be a path on the instance, such as /v1/inference")
        body = {} if call.payload is None or call.method in ("GET", "HEAD") else {"json": call.payload}
        return self._client.build_request(call.method, url, headers=headers, timeout=self._timeout, **body)


def _key(user_id: str, pool: str) -> str:
    return f"{user_id}:{pool}"
