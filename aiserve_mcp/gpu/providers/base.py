"""The one interface every GPU marketplace implements, and the values that cross it.

Units are fixed here so that no caller converts: VRAM in GB per GPU, prices in USD per hour for the
whole offer (all its GPUs), durations in hours. Provider clients translate their API's units at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

from aiserve_mcp.core.errors import Conflict, RateLimited, ServiceUnavailable, UpstreamFailed

Billing = Literal["metered", "prepaid"]
InstanceStatus = Literal["provisioning", "running", "failed", "destroyed"]


class ProviderFailed(UpstreamFailed):
    """A marketplace answered with an error or not at all (HTTP 502 ``UPSTREAM_ERROR``)."""


class ProviderNotConfigured(ServiceUnavailable):
    """The marketplace has no API key in the settings."""


class OfferUnavailable(Conflict):
    """The offer is gone, rented by someone else, or refused by the marketplace."""


class ProviderRateLimited(RateLimited):
    """The marketplace refused for rate or quota reasons; ``retry_after_s`` says when to try again."""


@dataclass(frozen=True)
class OfferQuery:
    """Filters every provider understands; ``None`` means no filter."""

    min_vram_gb: int | None = None
    max_price_per_hour: Decimal | None = None
    gpu_model: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class Offer:
    """One rentable machine configuration, in this platform's units."""

    provider: str
    offer_id: str
    gpu_model: str
    num_gpus: int
    vram_gb: int  # per GPU
    price_per_hour: Decimal  # whole offer
    location: str
    available: bool = True
    reliability: float | None = None
    extras: dict[str, str | int | float | bool | None] = field(default_factory=dict)

    @property
    def price_per_gpu_hour(self) -> Decimal:
        return self.price_per_hour / max(self.num_gpus, 1)


@dataclass(frozen=True)
class RentRequest:
    offer: Offer  # as the provider showed it moments before, when the market checked it is available
    duration_hours: int
    label: str  # this platform's contract id, shown in the provider's console
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rental:
    """What a provider says right after accepting a rent request."""

    instance_id: str
    status: InstanceStatus
    price_per_hour: Decimal
    endpoint: str | None = None  # http://host:port of the worker once known
    access_token: str | None = None  # secret the worker expects, when the provider issues one


@dataclass(frozen=True)
class InstanceState:
    status: InstanceStatus
    endpoint: str | None = None
    message: str | None = None


class Provider(Protocol):
    """A GPU marketplace. Every call may raise ``ProviderFailed``, ``ProviderRateLimited``,
    ``ProviderNotConfigured``; ``rent`` also ``OfferUnavailable``."""

    name: str
    billing: Billing  # metered: billed per second while it exists; prepaid: duration paid up front

    @property
    def configured(self) -> bool: ...

    async def search(self, query: OfferQuery) -> list[Offer]:
        """Live offers matching ``query`` (the provider filters; callers filter again)."""
        ...

    async def get_offer(self, offer_id: str) -> Offer | None:
        """The current state of one offer, or ``None`` when it is gone."""
        ...

    async def rent(self, request: RentRequest) -> Rental:
        """Rent ``request.offer`` (without asking for it again); leaves nothing billing if it fails."""
        ...

    async def status(self, instance_id: str) -> InstanceState:
        """The instance's state now; ``destroyed`` when the provider no longer knows it."""
        ...

    async def destroy(self, instance_id: str) -> None:
        """Stop billing for the instance; succeeds when it is already gone."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StartsWorkers(Protocol):
    """A marketplace whose machines fetch the worker bundle from this platform and start it (vast.ai,
    io.net). The market asks before anything is stored or held, so that a rent whose machine could never
    serve is refused at once."""

    async def check_worker_start(self) -> None:
        """Raise ``BundleUnavailable`` (HTTP 503 naming AISERVE_PUBLIC_URL) when a rented machine could not
        fetch the worker, or the bundle cannot be built."""
        ...
