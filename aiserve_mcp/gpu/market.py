"""The GPU market: offers from every provider at once, and the contracts users rent from them.

One slow or failing provider never fails a search: each provider gets its own timeout, and its error is
reported beside the others' offers. Every rent is recorded as a contract owned by its user before the
provider is called, so that nothing rented is ever untracked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anyio

from aiserve_mcp.core.errors import (
    AiserveError,
    InsufficientCredits,
    SpendingLimit,
    ValidationFailed,
    kind_of,
)
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.core.ttl_cache import TtlCache
from aiserve_mcp.gpu.catalog import GpuCatalog, normalise_name
from aiserve_mcp.gpu.contracts import ACTIVE, ContractStore, new_contract_id
from aiserve_mcp.gpu.providers.base import (
    InstanceStatus,
    Offer,
    OfferQuery,
    OfferUnavailable,
    Provider,
    ProviderFailed,
    ProviderNotConfigured,
    ProviderRateLimited,
    RentRequest,
    StartsWorkers,
)
from aiserve_mcp.gpu.providers.local import LocalProvider
from aiserve_mcp.gpu.selection import Candidate, Criteria, rank
from aiserve_mcp.gpu.tables import GpuContract
from aiserve_mcp.money.costs import CostGate
from aiserve_mcp.worker.bundle import BundleUnavailable

log = logging.getLogger(__name__)

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
WorkerProbe = Callable[[GpuContract], Awaitable[GpuContract | None]]
MAX_DURATION_HOURS = 8760
_END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ProviderReport:
    """How one provider answered a search."""

    name: str
    configured: bool
    count: int = 0
    cached: bool = False
    error: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class MarketSearch:
    offers: list[Offer]
    reports: list[ProviderReport]


@dataclass(frozen=True)
class ItemError:
    """Why one item of a reserve or batch failed."""

    code: str
    error: str
    provider: str | None = None
    offer_id: str | None = None


@dataclass
class Reservation:
    contracts: list[GpuContract] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)


def _item_error(exc: AiserveError, provider: str | None, offer_id: str | None = None) -> ItemError:
    return ItemError(kind_of(exc).code, exc.message, provider, offer_id)


class GpuMarket:
    def __init__(
        self,
        contracts: ContractStore,
        providers: Mapping[str, Provider],
        catalog: GpuCatalog,
        costs: CostGate,
        *,
        cache_ttl_s: float,
        timeout_s: float,
    ) -> None:
        self.contracts = contracts
        self._costs = costs
        self.providers = dict(providers)
        self._catalog = catalog
        self._timeout_s = timeout_s
        self._cache: TtlCache[tuple[str, OfferQuery], list[Offer]] = TtlCache(cache_ttl_s)
        # Asks a running contract's worker for its health and records an answer (set by the traffic
        # service, which holds the client and the egress rules); the contract as recorded, or None.
        self.worker_probe: WorkerProbe | None = None

    def provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise ValidationFailed(
                f"unknown provider '{name}'; use one of {', '.join(self.providers)}",
                {"providers": list(self.providers)},
            ) from None

    @property
    def marketplaces_configured(self) -> bool:
        """Whether any provider other than this host has credentials."""
        return any(p.configured for name, p in self.providers.items() if name != "local")

    # -- offers -------------------------------------------------------------------------------------

    async def search(self, query: OfferQuery, names: Sequence[str] | None = None) -> MarketSearch:
        """Offers from ``names`` (default: every provider), queried concurrently."""
        chosen = [self.provider(n) for n in (names or list(self.providers))]
        reports: dict[str, ProviderReport] = {}
        found: dict[str, list[Offer]] = {}

        async def one(provider: Provider) -> None:
            if not provider.configured:
                reports[provider.name] = ProviderReport(provider.name, False, error="not configured")
                return
            try:
                with anyio.fail_after(self._timeout_s):
                    offers, cached = await self._cache.get(
                        (provider.name, query), lambda: provider.search(query)
                    )
            except TimeoutError:
                exc: AiserveError = ProviderFailed(f"{provider.name} did not answer in {self._timeout_s:g} s")
                reports[provider.name] = ProviderReport(
                    provider.name, True, error=exc.message, code="TIMEOUT"
                )
                return
            except AiserveError as exc:
                reports[provider.name] = ProviderReport(
                    provider.name, True, error=exc.message, code=kind_of(exc).code
                )
                return
            matching = [o for o in offers if _matches(o, query)]
            found[provider.name] = matching
            reports[provider.name] = ProviderReport(provider.name, True, len(matching), cached)

        async with anyio.create_task_group() as group:
            for provider in chosen:
                group.start_soon(one, provider)
        offers = [o for p in chosen for o in found.get(p.name, [])]
        offers.sort(key=lambda o: (o.price_per_hour, o.provider, o.offer_id))
        return MarketSearch(offers, [reports[p.name] for p in chosen])

    def candidates(self, offers: list[Offer]) -> tuple[list[Candidate], list[Offer]]:
        """The available offers as scoring candidates (matched to the catalog, priced per GPU-hour), and
        the available offers the catalog does not know (unlisted GPUs, CPU slots)."""
        candidates, unknown = [], []
        for offer in {(o.provider, o.offer_id): o for o in offers if o.available}.values():
            spec = self._catalog.match(offer.gpu_model, offer.vram_gb) if offer.num_gpus else None
            if spec is None:
                unknown.append(offer)
            else:
                candidates.append(Candidate(spec, offer.price_per_gpu_hour, offer.offer_id, offer.provider))
        return candidates, unknown

    def ranked(self, offers: list[Offer], criteria: Criteria) -> list[Offer]:
        """Available offers, best first: catalog-matched GPUs by the preference score, then the rest
        (GPUs the catalog does not know, CPU slots) by price."""
        by_key = {(o.provider, o.offer_id): o for o in offers}
        candidates, unknown = self.candidates(offers)
        scored = rank(candidates, criteria)
        best = [by_key[(str(s.candidate.provider), str(s.candidate.offer_id))] for s in scored]
        if not criteria.preferred_vendors and not criteria.preferred_tiers:
            best += sorted(
                (
                    o
                    for o in unknown
                    if o.vram_gb >= criteria.min_vram
                    and _within(o.price_per_gpu_hour, criteria.max_price_per_hour)
                ),
                key=lambda o: o.price_per_hour,
            )
        return best

    # -- contracts ----------------------------------------------------------------------------------

    async def rent(
        self,
        payer: Principal,
        provider_name: str,
        offer_id: str,
        duration_hours: int,
        auto_renew: bool,
        pool: str = "default",
    ) -> GpuContract:
        """Rent one offer for ``payer``. Its cost (price x duration_hours) passes the spending guardrails
        and is held from the payer's credits first; the contract is stored before the provider is called
        and ends ``failed`` (with the provider's reason, nothing charged) when the rent does not go
        through."""
        provider = self.provider(provider_name)
        if not 1 <= duration_hours <= MAX_DURATION_HOURS:
            raise ValidationFailed(f"duration_hours must be between 1 and {MAX_DURATION_HOURS}")
        if auto_renew and provider.billing == "prepaid":
            raise ValidationFailed(
                f"{provider_name} is prepaid for duration_hours and cannot auto-renew; rent again instead"
            )
        with anyio.fail_after(self._timeout_s):
            if isinstance(provider, StartsWorkers):  # a machine that could never fetch the worker: refuse
                await provider.check_worker_start()
            offer = await provider.get_offer(offer_id)
        if offer is None or not offer.available:
            raise OfferUnavailable(
                f"offer '{offer_id}' on {provider_name} is no longer available",
                {"provider": provider_name, "offer_id": offer_id},
            )
        now = datetime.now(UTC)
        contract_id = new_contract_id()
        cost = offer.price_per_hour * duration_hours
        await self._costs.authorize(
            payer, cost, contract_id, f"{offer.gpu_model} on {provider_name} for {duration_hours} h"
        )
        contract = await self.contracts.add(
            GpuContract(
                id=contract_id,
                user_id=payer.user_id,
                api_key_id=payer.api_key_id,
                provider=provider_name,
                offer_id=offer_id,
                gpu_model=offer.gpu_model,
                pool=pool,
                num_gpus=offer.num_gpus,
                vram_gb=offer.vram_gb,
                location=offer.location,
                price_per_hour=offer.price_per_hour,
                billing=provider.billing,
                duration_hours=duration_hours,
                auto_renew=auto_renew,
                status="provisioning",
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(hours=duration_hours),
            )
        )
        try:
            rental = await provider.rent(RentRequest(offer_id, duration_hours, contract.id))
        except Exception as exc:
            reason = exc.message if isinstance(exc, AiserveError) else "internal error"
            await self.contracts.update(contract.id, status="failed", status_message=reason[:500])
            await self._costs.abandon(payer, contract.id)
            raise
        finally:
            self._cache.invalidate(lambda key: key[0] == provider_name)
        contract = await self.contracts.update(
            contract.id,
            instance_id=rental.instance_id,
            status=rental.status,
            price_per_hour=rental.price_per_hour,
            endpoint=rental.endpoint,
            access_token=rental.access_token,
        )
        return await self._probed(contract)

    async def _probed(self, contract: GpuContract) -> GpuContract:
        """A contract that is running, with an endpoint whose worker has not answered yet, after one
        health probe of its worker (recorded when it answers)."""
        if (
            self.worker_probe is None
            or contract.status != "running"
            or not contract.endpoint
            or contract.worker_answered_at is not None
        ):
            return contract
        try:
            return await self.worker_probe(contract) or contract
        except AiserveError as exc:
            log.info("cannot record the health of %s's worker: %s", contract.id, exc.message)
            return contract

    async def reserve(
        self,
        payer: Principal,
        count: int,
        query: OfferQuery,
        criteria: Criteria,
        duration_hours: int,
        auto_renew: bool,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
        pool: str = "default",
    ) -> Reservation:
        """Rent ``count`` of the best offers across ``names``: a refused offer (stale offers are common,
        or one the payer's limits or credits cannot cover) moves on to the next; a provider that is rate
        limited or down is skipped for the rest."""
        search = await self.search(query, names)
        result = Reservation(
            errors=[
                ItemError(r.code or "", r.error, r.name) for r in search.reports if r.error and r.configured
            ]
        )
        skipped: set[str] = set()
        for offer in self.ranked(search.offers, criteria):
            if len(result.contracts) == count:
                break
            provider = offer.provider
            if provider in skipped or (auto_renew and self.providers[provider].billing == "prepaid"):
                continue
            try:
                contract = await self.rent(payer, provider, offer.offer_id, duration_hours, auto_renew, pool)
            except (OfferUnavailable, ProviderFailed) as exc:
                result.errors.append(_item_error(exc, provider, offer.offer_id))
                continue
            except TimeoutError:
                timeout = ProviderFailed(f"{provider} timed out")
                result.errors.append(_item_error(timeout, provider, offer.offer_id))
                skipped.add(provider)
                continue
            except (SpendingLimit, InsufficientCredits) as exc:
                result.errors.append(_item_error(exc, provider, offer.offer_id))
                continue  # a cheaper offer may still fit
            except (ProviderRateLimited, ProviderNotConfigured, BundleUnavailable) as exc:
                result.errors.append(_item_error(exc, provider, offer.offer_id))
                skipped.add(provider)
                continue
            result.contracts.append(contract)
            if progress is not None:
                await progress(len(result.contracts), count, f"{contract.provider}: {contract.gpu_model}")
        if len(result.contracts) < count:
            result.errors.append(
                ItemError(
                    "INSUFFICIENT_CAPACITY",
                    f"reserved {len(result.contracts)} of {count}: no more matching offers could be rented",
                )
            )
        return result

    async def destroy(
        self, user_id: str, provider_name: str, ref: str, reason: str | None = None
    ) -> GpuContract:
        """Destroy the caller's instance ``ref`` (contract id or provider instance id), with ``reason`` as
        its status message; idempotent."""
        provider = self.provider(provider_name)
        contract = await self.contracts.find(user_id, provider_name, ref)
        if contract.status not in ACTIVE:
            return contract
        if contract.instance_id is not None:
            await provider.destroy(contract.instance_id)
        self._cache.invalidate(lambda key: key[0] == provider_name)
        return await self._ended(contract, "destroyed", reason)

    async def _ended(
        self,
        contract: GpuContract,
        status: InstanceStatus,
        message: str | None = None,
        *,
        ended_at: datetime | None = None,
    ) -> GpuContract:
        """Record that ``contract`` ended (now, or at ``ended_at``) and charge it: the hours used in its
        current period (at least the first hour on prepaid providers, at most the period), or nothing when
        it failed."""
        now = ended_at or datetime.now(UTC)
        period_start = contract.expires_at - timedelta(hours=contract.duration_hours)
        hours = Decimal((now - period_start).total_seconds()) / 3600
        if contract.billing == "prepaid":
            hours = max(hours, Decimal(1))
        hours = min(hours, Decimal(contract.duration_hours))
        cost = Decimal(0) if status == "failed" else contract.price_per_hour * hours
        await self._costs.settle(contract.id, cost, f"{contract.gpu_model} on {contract.provider}: {status}")
        return await self.contracts.update(
            contract.id, status=status, status_message=message, endpoint=None, destroyed_at=now
        )

    async def end_leftover_local(self) -> list[GpuContract]:
        """At start-up (and on stop): end every contract stored as active on this host's provider whose
        worker no live server holds (the server that started it stopped, was restarted or killed), as a
        destroy does: a leftover worker still running is stopped, and the credit hold is settled for the
        time the worker ran (until its last heartbeat), or released when it never started. Contracts held
        by this server or by another live server process on this host are left alone."""
        local = self.providers.get("local")
        if not isinstance(local, LocalProvider):
            return []
        ended = []
        for contract in await self.contracts.due(_END_OF_TIME):  # every active contract
            if contract.provider != "local":
                continue
            period_start = contract.expires_at - timedelta(hours=contract.duration_hours)
            try:  # one contract that cannot be ended must not keep the server from starting
                ending = await local.leftover(
                    contract.id, contract.instance_id, period_start, contract.created_at
                )
                if ending is not None:
                    ended.append(
                        await self._ended(contract, ending.status, ending.message, ended_at=ending.at)
                    )
            except Exception:
                log.exception("cannot end the leftover local contract %s", contract.id)
        if ended:
            self._cache.invalidate(lambda key: key[0] == "local")
            log.warning(
                "ended %d local contract(s) whose worker stopped with its server: %s",
                len(ended),
                ", ".join(c.id for c in ended),
            )
        return ended

    async def refresh(self, contract: GpuContract) -> GpuContract:
        """Ask the provider for an active contract's state; keeps the last known state if it cannot."""
        if contract.status not in ACTIVE or contract.instance_id is None:
            return contract
        provider = self.providers.get(contract.provider)
        if provider is None:
            return contract
        try:
            with anyio.fail_after(self._timeout_s):
                state = await provider.status(contract.instance_id)
        except (AiserveError, TimeoutError) as exc:
            log.warning("cannot refresh %s on %s: %s", contract.id, contract.provider, exc)
            return contract
        if state.status in ("failed", "destroyed"):
            return await self._ended(contract, state.status, state.message)
        changes: dict[str, object] = {"status": state.status, "status_message": state.message}
        if state.endpoint is not None or state.status != "running":
            changes["endpoint"] = state.endpoint
            if state.endpoint != contract.endpoint:  # a new address: its worker has not answered there
                changes["worker_answered_at"] = None
        if all(getattr(contract, k) == v for k, v in changes.items()):
            return contract
        return await self._probed(await self.contracts.update(contract.id, **changes))

    async def contract(self, user_id: str, contract_id: str) -> GpuContract:
        return await self.refresh(await self.contracts.owned(user_id, contract_id))

    async def _refreshed(self, rows: list[GpuContract], statuses: tuple[str, ...]) -> list[GpuContract]:
        """``rows``, those whose status is in ``statuses`` refreshed from their providers concurrently."""
        async with anyio.create_task_group() as group:
            for index, row in enumerate(rows):
                if row.status in statuses:

                    async def refresh(i: int = index, r: GpuContract = row) -> None:
                        rows[i] = await self.refresh(r)

                    group.start_soon(refresh)
        return rows

    async def list_contracts(self, user_id: str, active_only: bool) -> list[GpuContract]:
        rows = await self._refreshed(list(await self.contracts.list_for(user_id, active_only)), ACTIVE)
        return [r for r in rows if r.status in ACTIVE] if active_only else rows

    async def serving(self, user_id: str) -> list[GpuContract]:
        """The caller's running contracts with an endpoint, oldest first. Only contracts still
        provisioning are asked about, so that sending traffic costs no status call per instance (running
        ones are refreshed by listings and ended by expiry)."""
        rows = await self._refreshed(list(await self.contracts.list_for(user_id, True)), ("provisioning",))
        return [c for c in reversed(rows) if c.status == "running" and c.endpoint]

    async def expire_due(self) -> int:
        """End contracts whose rented time is over: metered auto-renewing ones are extended by their
        duration, all others destroyed. Returns how many were destroyed."""
        destroyed = 0
        for contract in await self.contracts.due(datetime.now(UTC)):
            if contract.auto_renew and contract.billing == "metered" and await self._renewed(contract):
                continue
            try:
                await self.destroy(
                    contract.user_id, contract.provider, contract.id, "the rented hours are over"
                )
                destroyed += 1
            except AiserveError as exc:
                log.warning("cannot destroy expired %s on %s: %s", contract.id, contract.provider, exc)
        return destroyed

    async def _renewed(self, contract: GpuContract) -> bool:
        """Charge the period that ended and authorize the next one; False when the payer's limits or
        credits refuse it (the instance is then destroyed)."""
        await self._costs.settle(
            contract.id,
            contract.price_per_hour * contract.duration_hours,
            f"{contract.gpu_model}: period ended",
        )
        payer = Principal(
            contract.user_id,
            "",
            False,
            "api_key" if contract.api_key_id else "jwt",
            api_key_id=contract.api_key_id,
        )
        try:
            await self._costs.authorize(
                payer,
                contract.price_per_hour * contract.duration_hours,
                contract.id,
                f"{contract.gpu_model}: renewed for {contract.duration_hours} h",
                spend_key=f"{contract.id}@{contract.expires_at.isoformat()}",
            )
        except (SpendingLimit, InsufficientCredits) as exc:
            log.info("not renewing %s: %s", contract.id, exc.message)
            return False
        await self.contracts.update(
            contract.id, expires_at=contract.expires_at + timedelta(hours=contract.duration_hours)
        )
        return True

    async def expire_forever(self, interval_s: float) -> None:
        """Run ``expire_due`` every ``interval_s`` seconds until cancelled; a pass that has started
        finishes (shielded), so that no destroy is cut off halfway."""
        while True:
            await anyio.sleep(interval_s)
            with anyio.CancelScope(shield=True):
                try:
                    await self.expire_due()
                except Exception:
                    log.exception("expiring GPU contracts failed; retrying in %.0f s", interval_s)

    async def aclose(self) -> None:
        local = self.providers.get("local")
        stops_workers = isinstance(local, LocalProvider) and local.holds_workers
        for provider in self.providers.values():
            await provider.aclose()
        if stops_workers:  # their contracts end now rather than at the next start
            try:
                await self.end_leftover_local()
            except Exception as exc:
                log.warning("local contracts not ended on stop (the next start ends them): %s", exc)


def _within(price: Decimal, max_price: Decimal | None) -> bool:
    return max_price is None or price <= max_price


def _matches(offer: Offer, query: OfferQuery) -> bool:
    """Filters applied again on our side: a provider's own filtering may be looser than the caller's."""
    location = query.location.lower() if query.location else None
    model = normalise_name(query.gpu_model) if query.gpu_model else None
    return (
        (query.min_vram_gb is None or offer.vram_gb >= query.min_vram_gb)
        and _within(offer.price_per_hour, query.max_price_per_hour)
        and (location is None or location in offer.location.lower())
        and (model is None or model in normalise_name(offer.gpu_model))
    )
