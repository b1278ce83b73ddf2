"""GPU instances: search live offers across marketplaces, rent, reserve, list and destroy owned instances."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from aiserve_mcp.gpu.market import MAX_DURATION_HOURS, ItemError, Reservation
from aiserve_mcp.gpu.offers import ProviderReport
from aiserve_mcp.gpu.providers.base import Offer, OfferQuery
from aiserve_mcp.gpu.selection import Criteria
from aiserve_mcp.money.approvals import Quote
from aiserve_mcp.tools.common import Input, IntegerNumber, Text
from aiserve_mcp.tools.gpu import Price, VramGb, saved_preferences
from aiserve_mcp.tools.gpu_quotes import Wanted, offers_quote, rent_quote
from aiserve_mcp.tools.ports import GpuPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

ProviderName = Literal["vastai", "ionet", "local"]
PoolName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class OfferFilters(Input):
    min_vram: VramGb | None = Field(default=None, description="Minimum VRAM per GPU, in GB.")
    max_price: Price | None = Field(default=None, description="Maximum USD per hour for the whole offer.")
    gpu_model: str | None = Field(default=None, min_length=1, max_length=100, examples=["RTX 4090"])
    location: str | None = Field(default=None, min_length=1, max_length=64, examples=["US"])

    def query(self) -> OfferQuery:
        return OfferQuery(self.min_vram, self.max_price, self.gpu_model, self.location)


class SearchInput(OfferFilters):
    provider: Literal["all", "vastai", "ionet", "local"] = "all"
    limit: Annotated[int, IntegerNumber(ge=1, le=10_000)] = Field(
        default=500, description="Most offers to return, cheapest first."
    )


class OfferOut(BaseModel):
    id: str = Field(description="'<provider>:<offer>'; rent it with rent_gpu_instance.")
    provider: str
    gpu_model: str
    vram_gb: int = Field(description="Per GPU.")
    price_per_hour: float = Field(description="USD per hour for the whole offer (all its GPUs).")
    location: str
    available: bool
    num_gpus: int
    price_per_gpu_hour: float
    reliability: float | None
    provider_offer: str = Field(description="The provider's own offer id.")

    @classmethod
    def of(cls, offer: Offer) -> OfferOut:
        return cls(
            id=f"{offer.provider}:{offer.offer_id}",
            provider=offer.provider,
            gpu_model=offer.gpu_model,
            vram_gb=offer.vram_gb,
            price_per_hour=float(offer.price_per_hour),
            location=offer.location,
            available=offer.available,
            num_gpus=offer.num_gpus,
            price_per_gpu_hour=round(float(offer.price_per_gpu_hour), 6),
            reliability=offer.reliability,
            provider_offer=offer.offer_id,
        )


class ProviderStatus(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    configured: bool
    count: int
    cached: bool
    error: str | None
    code: str | None


class ItemErrorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    error: str
    provider: str | None
    offer_id: str | None


class SearchOutput(BaseModel):
    instances: list[OfferOut]
    count: int = Field(description="Offers returned.")
    total: int = Field(description="Offers matching before the limit.")
    provider: str
    providers: list[ProviderStatus]
    errors: list[ItemErrorOut] = Field(
        description="Providers that failed; the others' offers are still here."
    )


@tool(scope="gpu:read", annotations=Annotations("Search GPU offers", open_world=True))
async def search_gpu_offers(ctx: ToolContext[GpuPort], args: SearchInput) -> SearchOutput:
    """Search live GPU offers from every configured marketplace (vast.ai, io.net) and this host at once,
    cheapest first. Filters: min_vram (GB per GPU), max_price (USD/hour for the whole offer), gpu_model
    (e.g. 'RTX 4090', matched ignoring case, spaces and vendor words), location (e.g. 'US'). A provider that
    fails or is not configured is reported in 'providers'/'errors' while the others' offers are returned.
    Results are cached for a few seconds; renting re-checks the offer."""
    ctx.caller()
    names = None if args.provider == "all" else [args.provider]
    found = await ctx.services.market.search(args.query(), names)
    shown = found.offers[: args.limit]
    return SearchOutput(
        instances=[OfferOut.of(o) for o in shown],
        count=len(shown),
        total=len(found.offers),
        provider=args.provider,
        providers=[ProviderStatus.model_validate(r) for r in found.reports],
        errors=[_error_out(r) for r in found.reports if r.configured and r.error],
    )


def _error_out(item: ProviderReport | ItemError) -> ItemErrorOut:
    if isinstance(item, ProviderReport):
        return ItemErrorOut(code=item.code or "", error=item.error or "", provider=item.name, offer_id=None)
    return ItemErrorOut.model_validate(item)


class RentConfig(Input):
    duration_hours: Annotated[int, IntegerNumber(ge=1, le=MAX_DURATION_HOURS)] = Field(
        default=1, description="Hours to rent; the instance is destroyed after."
    )
    auto_renew: bool = Field(
        default=False,
        strict=True,
        description="Keep metered instances past duration_hours (not for prepaid io.net).",
    )
    pool: PoolName = Field(default="default", description="The load-balancing pool the instance joins.")


class RentInput(RentConfig):
    provider: ProviderName
    instance_id: Text = Field(
        min_length=1, max_length=140, description="The offer to rent: its 'id' or 'provider_offer'."
    )


class ContractOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    contract_id: str = Field(validation_alias="id")
    provider: str
    instance_id: str | None = Field(description="The provider's instance id (null until it accepted).")
    offer_id: str
    status: str = Field(description="provisioning, running, failed or destroyed.")
    status_message: str | None
    gpu_model: str
    pool: str
    num_gpus: int
    vram_gb: int
    location: str
    price_per_hour: float
    billing: str = Field(description="metered (per second while it exists) or prepaid (duration up front).")
    duration_hours: int
    auto_renew: bool
    estimated_cost: float = Field(description="price_per_hour x duration_hours, USD.")
    endpoint: str | None = Field(description="Where the instance's worker answers, once running.")
    created_at: datetime
    expires_at: datetime
    destroyed_at: datetime | None


def _offer_ref(provider: str, ref: str) -> str:
    return ref.removeprefix(f"{provider}:")


async def _rent_quote(ctx: ToolContext[GpuPort], args: RentInput) -> Quote:
    ref = _offer_ref(args.provider, args.instance_id)
    return await rent_quote(ctx.services.market, args.provider, ref, args.duration_hours)


@tool(
    scope="gpu:write",
    annotations=Annotations("Rent a GPU offer", read_only=False, idempotent=False, open_world=True),
    quote=_rent_quote,
)
async def rent_gpu_instance(ctx: ToolContext[GpuPort], args: RentInput) -> ContractOut:
    """Rent one GPU offer found with search_gpu_offers, for duration_hours (it is destroyed when they end
    unless auto_renew). Returns the contract you own; status starts 'provisioning' (cloud) or 'running'
    (local). Fails with CONFLICT when the offer is gone (offers go stale fast: search again or use
    reserve_gpus), SERVICE_UNAVAILABLE when the provider is not configured, APPROVAL_REQUIRED when your
    approval policy holds it for the account owner (priced at the offer's price x duration_hours)."""
    market = ctx.services.market
    contract = await market.rent(
        ctx.caller(),
        args.provider,
        _offer_ref(args.provider, args.instance_id),
        args.duration_hours,
        args.auto_renew,
        args.pool,
    )
    return ContractOut.model_validate(contract)


class InstanceRef(Input):
    provider: ProviderName
    instance_id: Text = Field(
        min_length=1, max_length=140, description="Contract id or provider instance id."
    )


class DestroyOutput(BaseModel):
    message: str
    instance_id: str
    contract_id: str
    status: str


@tool(
    scope="gpu:write",
    annotations=Annotations("Destroy a GPU instance", read_only=False, destructive=True, open_world=True),
)
async def destroy_gpu_instance(ctx: ToolContext[GpuPort], args: InstanceRef) -> DestroyOutput:
    """Destroy one of your GPU instances (by contract id or provider instance id) so it stops billing.
    Destroying an instance that is already gone succeeds. Other users' instances are NOT_FOUND."""
    contract = await ctx.services.market.destroy(ctx.caller().user_id, args.provider, args.instance_id)
    return DestroyOutput(
        message="Instance destroyed successfully",
        instance_id=args.instance_id,
        contract_id=contract.id,
        status=contract.status,
    )


class ReserveFilters(OfferFilters):
    provider: Literal["all", "vastai", "ionet", "local"] = "all"

    def names(self) -> list[str] | None:
        return None if self.provider == "all" else [self.provider]


class ReserveInput(Input):
    count: Annotated[int, IntegerNumber(ge=1, le=64)] = Field(description="How many instances to rent.")
    filters: ReserveFilters = Field(default_factory=ReserveFilters)
    config: RentConfig = Field(default_factory=RentConfig)


class Reserved(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    instance_id: str | None
    provider: str
    contract_id: str = Field(validation_alias="id")
    gpu_model: str
    price_per_hour: float
    status: str
    endpoint: str | None


class ReserveOutput(BaseModel):
    reserved: list[Reserved]
    count: int
    requested: int
    errors: list[ItemErrorOut]


async def _criteria(ctx: ToolContext[GpuPort], filters: OfferFilters) -> Criteria:
    saved = (await saved_preferences(ctx)).criteria()
    return dataclasses.replace(
        saved,
        min_vram=saved.min_vram if filters.min_vram is None else filters.min_vram,
        max_price_per_hour=filters.max_price or saved.max_price_per_hour,
    )


async def _reserve(
    ctx: ToolContext[GpuPort],
    count: int,
    filters: OfferFilters,
    config: RentConfig,
    names: Sequence[str] | None,
    done: int,
) -> Reservation:
    async def progress(rented: float, total: float | None, message: str | None) -> None:
        await ctx.report(done + rented, None, message)

    return await ctx.services.market.reserve(
        ctx.caller(),
        count,
        filters.query(),
        await _criteria(ctx, filters),
        config.duration_hours,
        config.auto_renew,
        names,
        progress,
        config.pool,
    )


async def _quote(
    ctx: ToolContext[GpuPort], verb: str, wanted: Wanted, filters: OfferFilters, config: RentConfig
) -> Quote | None:
    criteria = await _criteria(ctx, filters)
    hours, renews = config.duration_hours, config.auto_renew
    return await offers_quote(ctx.services.market, verb, wanted, filters.query(), criteria, hours, renews)


async def _reserve_quote(ctx: ToolContext[GpuPort], args: ReserveInput) -> Quote | None:
    return await _quote(ctx, "Reserve", [(args.filters.names(), args.count)], args.filters, args.config)


@tool(
    scope="gpu:write",
    annotations=Annotations("Reserve GPUs", read_only=False, idempotent=False, open_world=True),
    quote=_reserve_quote,
)
async def reserve_gpus(ctx: ToolContext[GpuPort], args: ReserveInput) -> ReserveOutput:
    """Rent `count` GPUs matching filters, choosing the best offers across providers by your saved GPU
    preferences (see test_gpu_preferences). When a provider refuses an offer it tries the next one; a
    rate-limited provider is skipped. Per-offer failures are listed in 'errors'; 'count' says how many
    were rented. Reports progress to MCP clients that send a progress token. APPROVAL_REQUIRED when your
    approval policy holds it for the account owner (priced at the offers that rank best now)."""
    result = await _reserve(ctx, args.count, args.filters, args.config, args.filters.names(), 0)
    return ReserveOutput(
        reserved=[Reserved.model_validate(c) for c in result.contracts],
        count=len(result.contracts),
        requested=args.count,
        errors=[_error_out(e) for e in result.errors],
    )


BatchCount = Annotated[int, IntegerNumber(ge=0, le=32)]


class BatchInput(Input):
    vastai_count: BatchCount = 0
    ionet_count: BatchCount = 0
    local_count: BatchCount = 0
    filters: OfferFilters = Field(default_factory=OfferFilters)
    config: RentConfig = Field(default_factory=RentConfig)


class BatchOutput(BaseModel):
    vastai_instances: list[str] = Field(description="Contract ids rented on vast.ai.")
    ionet_instances: list[str]
    local_instances: list[str]
    total_created: int
    errors: list[ItemErrorOut]


async def _batch_quote(ctx: ToolContext[GpuPort], args: BatchInput) -> Quote | None:
    wanted = [(["vastai"], args.vastai_count), (["ionet"], args.ionet_count), (["local"], args.local_count)]
    return await _quote(ctx, "Rent", wanted, args.filters, args.config)


@tool(
    scope="gpu:write",
    annotations=Annotations("Rent GPUs in batch", read_only=False, idempotent=False, open_world=True),
    quote=_batch_quote,
)
async def batch_rent_gpu_instances(ctx: ToolContext[GpuPort], args: BatchInput) -> BatchOutput:
    """Rent a number of instances on each provider (vastai_count, ionet_count, local_count), each the best
    available offer there by your GPU preferences and the optional filters. Returns the contract ids per
    provider and per-item errors; reports progress to MCP clients that send a progress token.
    APPROVAL_REQUIRED when your approval policy holds it for the account owner (priced at the offers that
    rank best now)."""
    wanted = {"vastai": args.vastai_count, "ionet": args.ionet_count, "local": args.local_count}
    rented: dict[str, list[str]] = {name: [] for name in wanted}
    errors: list[ItemErrorOut] = []
    for name, count in wanted.items():
        if count:
            result = await _reserve(
                ctx, count, args.filters, args.config, [name], sum(map(len, rented.values()))
            )
            rented[name] = [c.id for c in result.contracts]
            errors += [_error_out(e) for e in result.errors]
    return BatchOutput(
        vastai_instances=rented["vastai"],
        ionet_instances=rented["ionet"],
        local_instances=rented["local"],
        total_created=sum(map(len, rented.values())),
        errors=errors,
    )


class ContractsInput(Input):
    active: bool = Field(default=True, strict=True, description="Only provisioning and running instances.")


class ContractList(BaseModel):
    contracts: list[ContractOut]
    count: int


@tool(scope="gpu:read", annotations=Annotations("My GPU instances", open_world=True))
async def list_gpu_contracts(ctx: ToolContext[GpuPort], args: ContractsInput) -> ContractList:
    """List the GPU instances you rented, newest first, each refreshed from its provider (status,
    endpoint), with price, billing model, expiry and estimated cost."""
    rows = await ctx.services.market.list_contracts(ctx.caller().user_id, args.active)
    return ContractList(contracts=[ContractOut.model_validate(r) for r in rows], count=len(rows))


class ContractRef(Input):
    contract_id: Text = Field(min_length=1, max_length=40)


@tool(scope="gpu:read", annotations=Annotations("One GPU instance", open_world=True))
async def get_gpu_contract(ctx: ToolContext[GpuPort], args: ContractRef) -> ContractOut:
    """One of your GPU instances by contract id, refreshed from its provider."""
    return ContractOut.model_validate(
        await ctx.services.market.contract(ctx.caller().user_id, args.contract_id)
    )
