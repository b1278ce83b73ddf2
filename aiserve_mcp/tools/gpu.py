"""GPU catalog and preferences: browse real GPU specs, store selection preferences, preview the choice."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aiserve_mcp.gpu.catalog import TIERS, VENDORS, Tier, default_catalog
from aiserve_mcp.gpu.offers import candidates
from aiserve_mcp.gpu.providers.base import OfferQuery
from aiserve_mcp.gpu.selection import Candidate, Criteria, Priority, rank
from aiserve_mcp.tools.common import DecimalNumber, Input, IntegerNumber, NoInput, any_case_pattern
from aiserve_mcp.tools.ports import GpuPort, NoPorts
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool


def _canonical_vendor(value: str) -> str:
    for vendor in VENDORS:
        if vendor.lower() == value.lower():
            return vendor
    raise ValueError(f"unknown vendor {value!r}; use one of {', '.join(VENDORS)}")


Vendor = Annotated[
    str,
    Field(
        description="NVIDIA, AMD or Intel, in any letter case.",
        json_schema_extra={"pattern": any_case_pattern(VENDORS)},
    ),
    AfterValidator(_canonical_vendor),
]
Price = Annotated[Decimal, DecimalNumber(places=4, gt=0, le=10_000)]
VramGb = Annotated[int, IntegerNumber(ge=0, le=1024)]


class PreferenceFields(Input):
    preferred_vendors: list[Vendor] = Field(default_factory=list, max_length=len(VENDORS))
    preferred_tiers: list[Tier] = Field(default_factory=list, max_length=len(TIERS))
    min_vram: VramGb = Field(default=0, description="Minimum GPU memory in GB.")
    max_price_per_hour: Price | None = Field(default=None, description="Maximum USD per hour.")
    priority: Priority = "balanced"

    def criteria(self) -> Criteria:
        return Criteria(
            tuple(self.preferred_vendors),
            tuple(self.preferred_tiers),
            self.min_vram,
            self.max_price_per_hour,
            self.priority,
        )


class Preferences(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str | None = Field(description="Null while the defaults are in use.")
    user_id: str
    preferred_vendors: list[str]
    preferred_tiers: list[str]
    min_vram: int
    max_price_per_hour: float | None
    priority: str
    is_default: bool = False
    created_at: datetime | None = None


async def _preferences(ctx: ToolContext[GpuPort]) -> Preferences:
    user_id = ctx.caller().user_id
    row = await ctx.services.gpu_preferences.get(user_id)
    if row is None:
        defaults = PreferenceFields()
        return Preferences(id=None, user_id=user_id, is_default=True, **defaults.model_dump())
    return Preferences.model_validate(row)


@tool(scope="gpu:read", annotations=Annotations("GPU preferences"))
async def get_gpu_preferences(ctx: ToolContext[GpuPort], args: NoInput) -> Preferences:
    """Read the caller's GPU selection preferences (vendors, tiers, minimum VRAM, price cap, priority);
    ``is_default`` is true until they are saved once."""
    return await _preferences(ctx)


class SavedPreferences(BaseModel):
    id: str
    message: str
    preferences: Preferences


@tool(scope="gpu:write", annotations=Annotations("Save GPU preferences", read_only=False))
async def set_gpu_preferences(ctx: ToolContext[GpuPort], args: PreferenceFields) -> SavedPreferences:
    """Save the caller's GPU selection preferences, replacing earlier ones. Vendors: NVIDIA, AMD, Intel;
    tiers: entry, mid-range, high-end, flagship; priority: performance, cost or balanced."""
    row = await ctx.services.gpu_preferences.save(ctx.caller().user_id, **args.model_dump())
    return SavedPreferences(
        id=row.id, message="Preferences saved successfully", preferences=Preferences.model_validate(row)
    )


class GpuChoice(BaseModel):
    name: str
    vendor: str
    vram_gb: int
    tier: str
    score: float = Field(description="0-100; see the scoring rules in the tool description.")
    fp16_tflops: float
    price_per_hour: float | None = Field(default=None, description="USD per GPU-hour of the offer.")
    provider: str | None = None
    offer_id: str | None = None
    components: dict[str, float]


class SelectionPreview(BaseModel):
    selected_gpu: GpuChoice | None = Field(description="Null when nothing meets the preferences.")
    alternatives: list[GpuChoice]
    source: str = Field(description="'catalog' (specs only) or 'offers' (live provider offers).")
    preferences: dict[str, Any]


class PreviewInput(Input):
    overrides: PreferenceFields | None = Field(
        default=None, description="Preferences to try instead of the saved ones (nothing is saved)."
    )
    alternatives: Annotated[int, IntegerNumber(ge=0, le=50)] = Field(
        default=5, description="How many runners-up to return."
    )


async def saved_preferences(ctx: ToolContext[GpuPort]) -> PreferenceFields:
    """The caller's saved preferences as input fields (the defaults until saved)."""
    saved = await _preferences(ctx)
    return PreferenceFields.model_validate(
        saved.model_dump(include=set(PreferenceFields.model_fields), exclude_none=True)
    )


async def _candidates(ctx: ToolContext[GpuPort]) -> tuple[list[Candidate], str]:
    """Live offers matched to the catalog when a marketplace is configured, else the catalog itself."""
    market = ctx.services.market
    if not market.marketplaces_configured:
        return [Candidate(spec) for spec in default_catalog().specs], "catalog"
    known, _ = candidates(market.catalog, (await market.search(OfferQuery())).offers)
    return known, "offers"


@tool(scope="gpu:read", annotations=Annotations("Preview GPU selection", open_world=True))
async def test_gpu_preferences(ctx: ToolContext[GpuPort], args: PreviewInput) -> SelectionPreview:
    """Preview which GPU the caller's preferences select, with a 0-100 score and ranked alternatives.
    Candidates below min_vram or above the price cap (USD per GPU-hour) are excluded; the score weighs
    performance (FP16 TFLOPS), memory, vendor/tier preference and, when prices are known, performance per
    dollar and price, with weights set by priority. Ranks live offers (source 'offers', each with its
    provider and offer id) when a marketplace is configured, else the GPU catalog by specs."""
    fields = args.overrides if args.overrides is not None else await saved_preferences(ctx)
    candidates, source = await _candidates(ctx)
    ranked = rank(candidates, fields.criteria())
    choices = [
        GpuChoice(
            name=s.candidate.spec.name,
            vendor=s.candidate.spec.vendor,
            vram_gb=s.candidate.spec.vram_gb,
            tier=s.candidate.spec.tier,
            score=s.score,
            fp16_tflops=s.candidate.spec.fp16_tflops,
            price_per_hour=float(s.candidate.price_per_hour) if s.candidate.price_per_hour else None,
            provider=s.candidate.provider,
            offer_id=s.candidate.offer_id,
            components=s.components,
        )
        for s in ranked[: args.alternatives + 1]
    ]
    return SelectionPreview(
        selected_gpu=choices[0] if choices else None,
        alternatives=choices[1:],
        source=source,
        preferences=fields.model_dump(mode="json"),
    )


class CatalogGpu(BaseModel):
    name: str
    vendor: str
    vram_gb: int
    tier: str
    architecture: str
    fp16_tflops: float
    memory_bandwidth_gbps: float
    avg_price_per_hour: float | None = Field(
        description="Mean USD per GPU-hour of live offers; null without a configured marketplace."
    )
    source: str


class CatalogList(BaseModel):
    gpus: list[CatalogGpu]
    count: int


class CatalogFilter(Input):
    vendor: Vendor | None = None
    tier: Tier | None = None
    min_vram: VramGb = Field(default=0, description="Minimum GPU memory in GB.")


async def _mean_prices(ctx: ToolContext[GpuPort]) -> dict[str, float]:
    """Mean USD per GPU-hour of the live offers of each catalog GPU (empty without a marketplace)."""
    candidates, source = await _candidates(ctx)
    if source != "offers":
        return {}
    prices: dict[str, list[Decimal]] = {}
    for c in candidates:
        if c.price_per_hour is not None:
            prices.setdefault(c.spec.id, []).append(c.price_per_hour)
    return {gpu: round(float(sum(p) / len(p)), 4) for gpu, p in prices.items()}


@tool(scope="gpu:read", annotations=Annotations("GPU catalog", open_world=True))
async def list_available_gpus(ctx: ToolContext[GpuPort], args: CatalogFilter) -> CatalogList:
    """List GPU models with their real specifications (VRAM, dense FP16 TFLOPS, memory bandwidth, tier,
    architecture, and the source of each figure), filtered by vendor, tier and minimum VRAM, with the mean
    live price per GPU-hour when a marketplace is configured."""
    prices = await _mean_prices(ctx)
    gpus = [
        CatalogGpu(
            avg_price_per_hour=prices.get(spec.id), **spec.model_dump(include=set(CatalogGpu.model_fields))
        )
        for spec in default_catalog().filter(args.vendor, args.tier, args.min_vram)
    ]
    return CatalogList(gpus=gpus, count=len(gpus))


EXAMPLES: dict[str, PreferenceFields] = {
    "cost_optimized": PreferenceFields(preferred_tiers=["entry", "mid-range"], min_vram=16, priority="cost"),
    "performance_focused": PreferenceFields(
        preferred_tiers=["high-end", "flagship"], min_vram=48, priority="performance"
    ),
    "nvidia_only": PreferenceFields(preferred_vendors=["NVIDIA"], min_vram=24, priority="balanced"),
    "amd_preferred": PreferenceFields(preferred_vendors=["AMD"], min_vram=64, priority="balanced"),
}


class Examples(BaseModel):
    examples: dict[str, dict[str, Any]]
    available_examples: list[str]


@tool(scope=None, annotations=Annotations("Example GPU preferences"))
async def gpu_preference_examples(ctx: ToolContext[NoPorts], args: NoInput) -> Examples:
    """Example preference sets to start from (cost_optimized, performance_focused, nvidia_only,
    amd_preferred); each can be saved as is with set_gpu_preferences."""
    return Examples(
        examples={name: fields.model_dump(mode="json") for name, fields in EXAMPLES.items()},
        available_examples=list(EXAMPLES),
    )
