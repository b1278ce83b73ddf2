"""The GPU catalog: real specifications of the GPUs marketplaces rent, and matching offers to them."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib.resources import files
from typing import Literal

from pydantic import BaseModel, Field

Tier = Literal["entry", "mid-range", "high-end", "flagship"]
TIERS: tuple[Tier, ...] = ("entry", "mid-range", "high-end", "flagship")
VENDORS = ("NVIDIA", "AMD", "Intel")
VRAM_MATCH_TOLERANCE = 0.07  # providers report memory in MB or GiB; snap within 7 %, as gpuhunt does

_NOISE = re.compile(r"\b(nvidia|geforce|amd|instinct|intel|tesla)\b|[^a-z0-9]+")


class GpuSpec(BaseModel):
    id: str
    name: str
    vendor: str
    architecture: str
    vram_gb: int
    fp16_tflops: float = Field(description="Dense FP16 tensor TFLOPS (no sparsity).")
    memory_bandwidth_gbps: float
    tier: Tier
    aliases: list[str]
    source: str
    note: str | None = None


def normalise_name(name: str) -> str:
    """``'NVIDIA GeForce RTX 4090'`` and ``'rtx_4090'`` both become ``'rtx4090'``."""
    return _NOISE.sub("", name.lower())


class GpuCatalog:
    def __init__(self, specs: list[GpuSpec]) -> None:
        self.specs = specs
        self._by_name: dict[str, list[GpuSpec]] = {}
        for spec in specs:
            for alias in {spec.name, spec.id, *spec.aliases}:
                self._by_name.setdefault(normalise_name(alias), []).append(spec)

    def match(self, name: str, vram_gb: float | None = None) -> GpuSpec | None:
        """The catalog entry for a provider's GPU name; VRAM tells apart models sold in several sizes."""
        candidates = self._by_name.get(normalise_name(name), [])
        if vram_gb is None or len(candidates) <= 1:
            return candidates[0] if candidates else None
        close = [s for s in candidates if abs(s.vram_gb - vram_gb) <= s.vram_gb * VRAM_MATCH_TOLERANCE]
        return min(close or candidates, key=lambda s: abs(s.vram_gb - vram_gb))

    def filter(self, vendor: str | None = None, tier: str | None = None, min_vram: int = 0) -> list[GpuSpec]:
        return [
            s
            for s in self.specs
            if (vendor is None or s.vendor.lower() == vendor.lower())
            and (tier is None or s.tier == tier)
            and s.vram_gb >= min_vram
        ]


@cache
def default_catalog() -> GpuCatalog:
    """The catalog shipped in ``aiserve_mcp/data/gpu_catalog.json`` (each row names its source)."""
    raw = json.loads(files("aiserve_mcp.data").joinpath("gpu_catalog.json").read_text())
    return GpuCatalog([GpuSpec.model_validate(row) for row in raw["gpus"]])
