"""Traffic to a user's instances: pick one by the pool's strategy, forward a request, measure it.

A target is resolved only among the caller's own running contracts (by contract id, provider instance id
or pool name); the address always comes from the contract, never from the request, and is vetted by
``egress.vet_endpoint``. Hop-by-hop headers and the caller's credentials are never forwarded; the
instance's own worker token is added instead. Redirects are returned, not followed. Only idempotent
methods are retried, on another instance, after a connection failure or a 502/503/504.

No traffic goes to an instance whose worker has never answered: a running contract becomes a backend
once its worker answers ``GET /health`` with its token (recorded as ``worker_answered_at``, cleared when
the provider reports a new endpoint). The market probes it when it becomes running (this service gives
the market its probe); until it answers, each server process probes it again when traffic looks for it,
at most every ``PROBE_EVERY_S`` seconds, and leaves it out.

An ``https://`` endpoint (io.net publishes its containers so) is vetted like an ``http://`` one, every
address its name resolves to, and then connected to by name: TLS checks the certificate against that
name, so a name that resolves elsewhere a moment later cannot stand in for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx

from aiserve_mcp.core.errors import (
    AiserveError,
    NotFound,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from aiserve_mcp.gpu.catalog import default_catalog
from aiserve_mcp.gpu.market import GpuMarket
from aiserve_mcp.gpu.tables import GpuContract
from aiserve_mcp.traffic.balancer import Backend, BackendLoad, Balancer, Outcome, Strategy
from aiserve_mcp.traffic.egress import Upstream, vet_endpoint
from aiserve_mcp.traffic.pools import PoolStore

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
PROBE_TIMEOUT_S = 3.0
PROBE_EVERY_S = 5.0
STARTING_RETRY_AFTER_S = 5


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
    share: float  # of the pool's requests in flight, 0-1 (0 when none are)


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
        self._probed: dict[str, float] = {}  # contract id -> when this process last probed its worker
        self._probing: dict[str, tuple[anyio.Event, list[bool]]] = {}  # probes under way: done, outcome
        market.worker_probe = self._probe_new

    async def running(self, user_id: str, pool: str | None = None) -> list[GpuContract]:
        """The caller's running instances whose worker has answered (in ``pool`` when given), oldest
        first; those whose worker never answered are probed now (see ``answered``) and left out until it
        does."""
        return await self.answered(
            [c for c in await self._market.serving(user_id) if pool is None or c.pool == pool]
        )

    async def answered(self, contracts: list[GpuContract]) -> list[GpuContract]:
        """``contracts`` whose worker has answered an authenticated health check: those that never did
        are probed concurrently (each at most every ``PROBE_EVERY_S`` seconds in this process; a caller
        that finds a probe under way waits for its outcome) and kept when their worker answers now."""
        ready = {c.id: c for c in contracts if c.worker_answered_at is not None}
        now = time.monotonic()
        due = [
            c
            for c in contracts
            if c.id not in ready
            and (c.id in self._probing or now - self._probed.get(c.id, -PROBE_EVERY_S) >= PROBE_EVERY_S)
        ]
        if due:

            async def probe(contract: GpuContract) -> None:
                if await self._probe_once(contract):
                    ready[contract.id] = contract

            async with anyio.create_task_group() as group:
                for contract in due:
                    group.start_soon(probe, contract)
        return [ready[c.id] for c in contracts if c.id in ready]

    async def _probe_new(self, contract: GpuContract) -> GpuContract | None:
        """For the market, when a contract becomes running: the contract as recorded once its worker
        answered, or None."""
        if not await self._probe_once(contract):
            return None
        return await self._market.contracts.owned(contract.user_id, contract.id)

    async def _probe_once(self, contract: GpuContract) -> bool:
        """``probe``, shared by the callers that need it at the same time."""
        if (pending := self._probing.get(contract.id)) is not None:
            done, outcome = pending
            await done.wait()
            return outcome[0]
        done, outcome = anyio.Event(), [False]
        self._probing[contract.id] = (done, outcome)
        try:
            outcome[0] = await self.probe(contract)
        finally:
            del self._probing[contract.id]
            done.set()
        return outcome[0]

    async def probe(self, contract: GpuContract) -> bool:
        """Ask the contract's worker ``GET /health`` with its token; when it answers ``{"status": "ok"}``,
        record that it answered. A vetting refusal (a private address) or no answer is False."""
        self._probed[contract.id] = time.monotonic()
        try:
            upstream = await self._vet(contract)
        except AiserveError:
            return False
        headers = {"Host": upstream.host_header}
        if contract.access_token:
            headers["Authorization"] = f"Bearer {contract.access_token}"
        try:
            response = await self._client.get(
                upstream.base_url.join("/health"),
                headers=headers,
                timeout=PROBE_TIMEOUT_S,
                follow_redirects=False,
            )
            healthy = response.status_code == 200 and response.json().get("status") == "ok"
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        if not healthy:
            return False
        await self._market.contracts.update(contract.id, worker_answered_at=datetime.now(UTC))
        self._probed.pop(contract.id, None)
        return True

    async def loads(self, user_id: str, pool: str) -> list[InstanceLoad]:
        contracts = await self.running(user_id, pool)
        measured = await self._balancer.loads(_key(user_id, pool), [c.id for c in contracts])
        in_flight = sum(measured[c.id].in_flight for c in contracts)
        return [
            InstanceLoad(
                c, weight_of(c), measured[c.id], measured[c.id].in_flight / in_flight if in_flight else 0.0
            )
            for c in contracts
        ]

    async def _targets(self, user_id: str, target: str | None) -> tuple[str, list[GpuContract]]:
        """The pool and the candidate contracts for ``target`` (None: the default pool): running ones whose
        worker has answered. A running target whose worker has not answered yet is 503 with Retry-After
        (403 when its address may not be used at all)."""
        running = await self._market.serving(user_id)
        if target is None:
            target = "default"
        chosen = [c for c in running if target in (c.id, c.instance_id)]
        if chosen:
            contract = chosen[0]
            if contract.worker_answered_at is None:
                await self._vet(contract)
                if not await self.answered([contract]):
                    raise self._starting(f"the worker of instance '{target}' has not answered yet")
            return contract.pool, [contract]
        pool = [c for c in running if c.pool == target]
        if not pool:
            raise NotFound(f"no running instance or pool '{target}' of yours to send this to")
        answered = await self.answered(pool)
        if not answered:
            raise self._starting(f"no worker in pool '{target}' has answered yet")
        return target, answered

    @staticmethod
    def _starting(what: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"{what}: it is still starting (installing and launching the worker takes a few minutes)",
            retry_after_s=STARTING_RETRY_AFTER_S,
        )

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
        local = contract.provider == "local"
        endpoint = httpx.URL(contract.endpoint)
        if endpoint.scheme == "https" and endpoint.host and not local and not endpoint.userinfo:
            port = endpoint.port or 443
            await vet_endpoint(
                str(httpx.URL(scheme="http", host=endpoint.host, port=port)),
                loopback_only=False,
                allow_private=self._allow_private,
            )
            named = httpx.URL(scheme="https", host=endpoint.host, port=endpoint.port)
            return Upstream(named, named.netloc.decode("ascii"))
        return await vet_endpoint(contract.endpoint, loopback_only=local, allow_private=self._allow_private)

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
