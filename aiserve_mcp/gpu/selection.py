"""Choosing a GPU for a user's preferences: a deterministic weighted score from 0 to 100.

Candidates below ``min_vram`` or above ``max_price_per_hour`` are excluded. Each remaining candidate gets
five components, each in [0, 1]:

- ``performance``: its FP16 TFLOPS over the best candidate's;
- ``memory``: its VRAM over 80 GB, capped at 1;
- ``preference``: half for a preferred vendor, half for a preferred tier (an empty list prefers all);
- ``value``: its TFLOPS per dollar over the best candidate's (needs prices);
- ``price``: the cheapest candidate's price over its own (needs prices).

The score is ``100 * sum(weight * component) / sum(weight)`` with the weights of the user's ``priority``
(below); without prices (catalog only) ``value`` and ``price`` drop out and the rest are renormalised.
Ties go to the cheaper, then to the name. A cheaper offer that is otherwise equal therefore never scores
lower, whatever the priority.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from aiserve_mcp.gpu.catalog import GpuSpec

Priority = Literal["performance", "cost", "balanced"]
REFERENCE_VRAM_GB = 80

WEIGHTS: dict[Priority, dict[str, float]] = {
    "performance": {"performance": 0.45, "memory": 0.15, "preference": 0.25, "value": 0.10, "price": 0.05},
    "balanced": {"performance": 0.25, "memory": 0.15, "preference": 0.25, "value": 0.20, "price": 0.15},
    "cost": {"performance": 0.10, "memory": 0.10, "preference": 0.25, "value": 0.30, "price": 0.25},
}
PRICED = ("value", "price")


@dataclass(frozen=True)
class Criteria:
    preferred_vendors: tuple[str, ...] = ()
    preferred_tiers: tuple[str, ...] = ()
    min_vram: int = 0
    max_price_per_hour: Decimal | None = None
    priority: Priority = "balanced"


@dataclass(frozen=True)
class Candidate:
    spec: GpuSpec
    price_per_hour: Decimal | None = None
    offer_id: str | None = None
    provider: str | None = None


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    score: float
    components: dict[str, float]


def _eligible(candidate: Candidate, criteria: Criteria) -> bool:
    if candidate.spec.vram_gb < criteria.min_vram:
        return False
    price = candidate.price_per_hour
    return criteria.max_price_per_hour is None or price is None or price <= criteria.max_price_per_hour


def rank(candidates: list[Candidate], criteria: Criteria) -> list[Scored]:
    """Score and order ``candidates`` (best first). Prices are used only when every candidate has one."""
    pool = [c for c in candidates if _eligible(c, criteria)]
    if not pool:
        return []
    prices = [float(c.price_per_hour) if c.price_per_hour is not None else 0.0 for c in pool]
    priced = all(p > 0 for p in prices)
    best_tflops = max(c.spec.fp16_tflops for c in pool)
    best_value = max(c.spec.fp16_tflops / p for c, p in zip(pool, prices, strict=True)) if priced else 0.0
    cheapest = min(prices)
    weights = {k: w for k, w in WEIGHTS[criteria.priority].items() if priced or k not in PRICED}
    vendors = {v.lower() for v in criteria.preferred_vendors}
    scored = []
    for c, price in zip(pool, prices, strict=True):
        components = {
            "performance": c.spec.fp16_tflops / best_tflops,
            "memory": min(c.spec.vram_gb / REFERENCE_VRAM_GB, 1.0),
            "preference": 0.5 * (not vendors or c.spec.vendor.lower() in vendors)
            + 0.5 * (not criteria.preferred_tiers or c.spec.tier in criteria.preferred_tiers),
        }
        if priced:
            components["value"] = (c.spec.fp16_tflops / price) / best_value
            components["price"] = cheapest / price
        total = sum(weights[k] * components[k] for k in weights) / sum(weights.values())
        scored.append(Scored(c, round(100 * total, 1), {k: round(v, 4) for k, v in components.items()}))
    return sorted(scored, key=lambda s: (-s.score, s.candidate.price_per_hour or 0, s.candidate.spec.name))
