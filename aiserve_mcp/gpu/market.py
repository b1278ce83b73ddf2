"""The GPU market: offers from every provider at once (``offers``), and the contracts users rent from them.

Every rent is recorded as a contract owned by its user before the provider is called, so that nothing
rented is ever untracked; every contract that ends is charged for the time it ran (``settlement``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import anyio

from aiserve_mcp.core.errors import (
    AiserveError,
    InsufficientCredits,
    SpendingLimit,
    ValidationFailed,
    kind_of,
)
from aiserve_mcp.core.leases import Leases
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.gpu.catalog import GpuCatalog
from aiserve_mcp.gpu.contracts import ACTIVE, ContractStore, new_contract_id
from aiserve_mcp.gpu.leftovers import end_leftovers
from aiserve_mcp.gpu.offers import MarketSearch, OfferSearch, ranked
from aiserve_mcp.gpu.providers.base import (
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
from aiserve_mcp.gpu.selection import Criteria
from aiserve_mcp.gpu.settlement import Settlement
from aiserve_mcp.gpu.tables import GpuContract
from aiserve_mcp.money.costs import CostGate
from aiserve_mcp.worker.bundle import BundleUnavailable

log = logging.getLogger(__name__)

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
WorkerProbe = Callable[[GpuContract], Awaitable[GpuContract | None]]
MAX_DURATION_HOURS = 8760  # the longest a contract may be rented for (tools check it at their input)
EXPIRY_LEASE: Final = "gpu-expiry"  # held by the one process whose expiry pass runs
EXPIRY_LEASE_S: Final = 600.0  # how long a pass may hold it (a process that died holding it blocks this long)


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
        leases: Leases,
        *,
        cache_ttl_s: float,
        timeout_s: float,
    ) -> None:
        self.contracts = contracts
        self._leases = leases
        self._costs = costs
        self._settlement = Settlement(contracts, costs)
        self.providers = dict(providers)
        self.catalog = catalog
        self._timeout_s = timeout_s
        self._search = OfferSearch(cache_ttl_s=cache_ttl_s, timeout_s=timeout_s)
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
        return await self._search([self.provider(n) for n in (names or list(self.providers))], query)

    async def offer(self, provider_name: str, offer_id: str) -> Offer:
        """One offer as its provider has it now; ``OfferUnavailable`` when it is gone or taken."""
        with anyio.fail_after(self._timeout_s):
            offer = await self.provider(provider_name).get_offer(offer_id)
        if offer is None or not offer.available:
            raise OfferUnavailable(
                f"offer '{offer_id}' on {provider_name} is no longer available",
                {"provider": provider_name, "offer_id": offer_id},
            )
        return offer

    def _candidates(self, search: MarketSearch, criteria: Criteria, auto_renew: bool) -> list[Offer]:
        """The offers :meth:`reserve` tries, best first: ranked by ``criteria``, without prepaid ones when
        the contracts are to auto-renew."""
        return [
            o
            for o in ranked(self.catalog, search.offers, criteria)
            if not (auto_renew and self.providers[o.provider].billing == "prepaid")
        ]

    async def best_offers(
        self,
        count: int,
        query: OfferQuery,
        criteria: Criteria,
        auto_renew: bool,
        names: Sequence[str] | None = None,
    ) -> list[Offer]:
        """The ``count`` offers that :meth:`reserve` would try first now (fewer when fewer match): what a
        reservation is quoted at. Renting may still move past one that is refused."""
        return self._candidates(await self.search(query, names), criteria, auto_renew)[:count]

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
        if auto_renew and provider.billing == "prepaid":
            raise ValidationFailed(
                f"{provider_name} is prepaid for duration_hours and cannot auto-renew; rent again instead"
            )
        if isinstance(provider, StartsWorkers):  # a machine that could never fetch the worker: refuse
            with anyio.fail_after(self._timeout_s):
                await provider.check_worker_start()
        offer = await self.offer(provider_name, offer_id)
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
                grant_id=payer.grant_id,
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
            rental = await provider.rent(RentRequest(offer, duration_hours, contract.id))
        except Exception as exc:
            reason = exc.message if isinstance(exc, AiserveError) else "internal error"
            await self.contracts.update(contract.id, status="failed", status_message=reason[:500])
            await self._costs.abandon(payer, contract.id)
            raise
        finally:
            self._search.forget(provider_name)
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
        for offer in self._candidates(search, criteria, auto_renew):
            if len(result.contracts) == count:
                break
            provider = offer.provider
            if provider in skipped:
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
        self._search.forget(provider_name)
        return await self._settlement.end(contract, "destroyed", reason)

    async def end_leftover_local(self) -> list[GpuContract]:
        """At start-up (and on stop): end every contract stored as active on this host's provider whose
        worker no live server holds (the server that started it stopped, was restarted or killed), as a
        destroy does; see :func:`aiserve_mcp.gpu.leftovers.end_leftovers`."""
        local = self.providers.get("local")
        if not isinstance(local, LocalProvider):
            return []
        ended = await end_leftovers(local, self.contracts, self._settlement)
        if ended:
            self._search.forget(local.name)
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
            return await self._settlement.end(contract, state.status, state.message)
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
        duration, all others destroyed. Returns how many were destroyed here. One process at a time
        passes over them (the others skip their pass while it runs), so that no contract is renewed or
        destroyed twice."""
        lease = await self._leases.acquire(EXPIRY_LEASE, EXPIRY_LEASE_S)
        if lease is None:
            return 0
        try:
            return await self._expire_due()
        finally:
            await self._leases.release(EXPIRY_LEASE, lease)

    async def _expire_due(self) -> int:
        destroyed = 0
        for contract in await self.contracts.due(datetime.now(UTC)):
            renews = contract.auto_renew and contract.billing == "metered"
            if renews and await self._settlement.renew(contract):
                continue
            try:
                await self.destroy(
                    contract.user_id, contract.provider, contract.id, "the rented hours are over"
                )
                destroyed += 1
            except AiserveError as exc:
                log.warning("cannot destroy expired %s on %s: %s", contract.id, contract.provider, exc)
        return destroyed

    async def expire_forever(self, interval_s: float) -> None:
        """Run ``expire_due`` every ``interval_s`` seconds until cancelled (every server process does; their
        passes take turns); a pass that has started finishes (shielded), so that no destroy is cut off
        halfway."""
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
