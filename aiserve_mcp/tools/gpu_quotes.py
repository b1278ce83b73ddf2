"""What renting GPUs would cost, for the approval gate: a rent is priced at its offer's current price, a
reservation or a batch at the offers that rank best now for the count asked (what ``reserve`` tries first;
an offer refused when renting is replaced by the next, which may cost more)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

from aiserve_mcp.gpu.market import GpuMarket
from aiserve_mcp.gpu.providers.base import Offer, OfferQuery
from aiserve_mcp.gpu.selection import Criteria
from aiserve_mcp.money.approvals import Quote, dollars

MAX_DESCRIPTION = 300
Wanted = Sequence[tuple[Sequence[str] | None, int]]
"""How many offers are wanted from which providers (None: any)."""


def _offer_text(offer: Offer) -> str:
    count = f"{offer.num_gpus}x " if offer.num_gpus else ""  # a CPU worker has no GPU to count
    return f"{count}{offer.gpu_model} on {offer.provider} at {dollars(offer.price_per_hour)}/h"


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


async def rent_quote(market: GpuMarket, provider: str, offer_id: str, hours: int) -> Quote:
    """Renting one offer for ``hours``: "Rent 1x RTX 4090 on vastai at $1.60/h for 3 h ($4.80)"."""
    offer = await market.offer(provider, offer_id)
    cost = offer.price_per_hour * hours
    return Quote(cost, f"Rent {_offer_text(offer)} for {hours} h ({dollars(cost)})")


async def offers_quote(
    market: GpuMarket,
    verb: str,
    wanted: Wanted,
    query: OfferQuery,
    criteria: Criteria,
    hours: int,
    auto_renew: bool,
) -> Quote | None:
    """Renting the best offers for each ``(providers, count)`` of ``wanted`` for ``hours``: "Reserve 3
    instances for 2 h ($2.20 at the offers that rank best now): 2 of 1x RTX 4090 on vastai at $0.35/h;
    1x RTX 3090 on vastai at $0.40/h". None when nothing is asked for."""
    requested = sum(count for _, count in wanted)
    if requested == 0:
        return None
    offers: list[Offer] = []
    for names, count in wanted:
        if count:
            offers += await market.best_offers(count, query, criteria, auto_renew, names)
    cost = sum((o.price_per_hour for o in offers), Decimal(0)) * hours
    shortfall = "" if len(offers) == requested else f"; only {_count(len(offers), 'matching offer')} now"
    description = (
        f"{verb} {_count(requested, 'instance')} for {hours} h "
        f"({dollars(cost)} at the offers that rank best now{shortfall})"
    )
    if offers:
        counted = Counter(map(_offer_text, offers)).items()
        description += ": " + "; ".join(f"{n} of {text}" if n > 1 else text for text, n in counted)
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 3] + "..."
    return Quote(cost, description)
