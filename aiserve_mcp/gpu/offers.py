"""Offers from every provider at once, and the best of them for a user's preferences.

One slow or failing provider never fails a search: each provider gets its own timeout, and its error is
reported beside the others' offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import anyio

from aiserve_mcp.core.errors import AiserveError, kind_of
from aiserve_mcp.core.ttl_cache import TtlCache
from aiserve_mcp.gpu.catalog import GpuCatalog, normalise_name
from aiserve_mcp.gpu.providers.base import Offer, OfferQuery, Provider, ProviderFailed
from aiserve_mcp.gpu.selection import Candidate, Criteria, rank


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


class OfferSearch:
    """Searches providers concurrently, each within ``timeout_s``, through a cache of ``cache_ttl_s``."""

    def __init__(self, *, cache_ttl_s: float, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._cache: TtlCache[tuple[str, OfferQuery], list[Offer]] = TtlCache(cache_ttl_s)

    def forget(self, provider: str) -> None:
        """Drop the cached offers of ``provider`` (after a rent or destroy changed them)."""
        self._cache.invalidate(lambda key: key[0] == provider)

    async def __call__(self, chosen: Sequence[Provider], query: OfferQuery) -> MarketSearch:
        """The offers of ``chosen`` matching ``query``, cheapest first, and how each provider answered."""
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


def candidates(catalog: GpuCatalog, offers: list[Offer]) -> tuple[list[Candidate], list[Offer]]:
    """The available offers as scoring candidates (matched to the catalog, priced per GPU-hour), and the
    available offers the catalog does not know (unlisted GPUs, CPU slots)."""
    known, unknown = [], []
    for offer in {(o.provider, o.offer_id): o for o in offers if o.available}.values():
        spec = catalog.match(offer.gpu_model, offer.vram_gb) if offer.num_gpus else None
        if spec is None:
            unknown.append(offer)
        else:
            known.append(Candidate(spec, offer.price_per_gpu_hour, offer.offer_id, offer.provider))
    return known, unknown


def ranked(catalog: GpuCatalog, offers: list[Offer], criteria: Criteria) -> list[Offer]:
    """Available offers, best first: catalog-matched GPUs by the preference score, then the rest (GPUs the
    catalog does not know, CPU slots) by price."""
    by_key = {(o.provider, o.offer_id): o for o in offers}
    known, unknown = candidates(catalog, offers)
    scored = rank(known, criteria)
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
