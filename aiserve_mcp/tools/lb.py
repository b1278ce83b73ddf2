"""Load balancing over the caller's instances, and requests proxied to them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from pydantic import AliasPath, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from aiserve_mcp.core.errors import NotFound, PayloadTooLarge
from aiserve_mcp.tools.common import Input
from aiserve_mcp.tools.gpu_instances import PoolName
from aiserve_mcp.tools.ports import TrafficPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool
from aiserve_mcp.traffic.balancer import STRATEGIES, Strategy
from aiserve_mcp.traffic.service import ProxyCall, UpstreamReply

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# What HTTP carries: a header name is a token; a value is visible ASCII with inner spaces or tabs.
HeaderName = Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HeaderValue = Annotated[str, StringConstraints(pattern=r"^(?:[!-~](?:[ \t]*[!-~])*)?$")]


class PoolInput(Input):
    pool: PoolName = Field(default="default", description="The pool of instances (set when renting).")


def _contract(name: str) -> AliasPath:
    return AliasPath("contract", name)


def _measured(name: str) -> AliasPath:
    return AliasPath("load", name)


class Load(BaseModel):
    # Read from the traffic service's InstanceLoad: its contract, the balancer's measures, share and weight.
    model_config = ConfigDict(from_attributes=True)

    instance_id: str | None = Field(
        validation_alias=_contract("instance_id"), description="The provider's instance id."
    )
    contract_id: str = Field(validation_alias=_contract("id"))
    provider: str = Field(validation_alias=_contract("provider"))
    gpu_model: str = Field(validation_alias=_contract("gpu_model"))
    connections: int = Field(
        validation_alias=_measured("in_flight"), description="Requests in flight through this server now."
    )
    load: float = Field(
        validation_alias="share", description="This instance's share of the pool's in-flight requests, 0-1."
    )
    response_time_ms: float | None = Field(
        validation_alias=_measured("ewma_ms"),
        description="Measured response time (EWMA); null until measured.",
    )
    requests: int = Field(validation_alias=_measured("requests"))
    failures: int = Field(validation_alias=_measured("failures"))
    healthy: bool = Field(
        validation_alias=_measured("healthy"), description="False while ejected after consecutive failures."
    )
    weight: float = Field(description="Weighted round robin share: the GPUs' FP16 TFLOPS, 1 for CPU.")

    @field_validator("load")
    @classmethod
    def _share(cls, share: float) -> float:
        return round(share, 4)

    @field_validator("response_time_ms")
    @classmethod
    def _milliseconds(cls, ms: float | None) -> float | None:
        return round(ms, 3) if ms is not None else None


class LoadsOutput(BaseModel):
    strategy: str
    pool: str
    loads: dict[str, Load] = Field(description="By contract id.")
    count: int


async def _loads(ctx: ToolContext[TrafficPort], pool: str) -> tuple[str, list[Load]]:
    user_id = ctx.caller().user_id
    traffic = ctx.services.traffic
    items = await traffic.loads(user_id, pool)
    return await traffic.pools.strategy(user_id, pool), [Load.model_validate(i) for i in items]


@tool(scope="lb:read", annotations=Annotations("Instance loads"))
async def get_instance_loads(ctx: ToolContext[TrafficPort], args: PoolInput) -> LoadsOutput:
    """Load of every running instance in one of your pools, as measured by this platform's balancer:
    requests in flight, share of the pool's traffic, response time (EWMA), totals and health."""
    strategy, loads = await _loads(ctx, args.pool)
    return LoadsOutput(
        strategy=strategy, pool=args.pool, loads={x.contract_id: x for x in loads}, count=len(loads)
    )


class InstanceInput(Input):
    instance_id: str = Field(min_length=1, max_length=140, description="Contract id or provider instance id.")


@tool(scope="lb:read", annotations=Annotations("Instance load"))
async def get_instance_load(ctx: ToolContext[TrafficPort], args: InstanceInput) -> Load:
    """Load of one of your running instances (by contract id or provider instance id)."""
    running = await ctx.services.traffic.running(ctx.caller().user_id)
    contract = next((c for c in running if args.instance_id in (c.id, c.instance_id)), None)
    if contract is None:
        raise NotFound(f"no running instance '{args.instance_id}' of yours")
    _, loads = await _loads(ctx, contract.pool)
    return next(x for x in loads if x.contract_id == contract.id)


class StrategyOutput(BaseModel):
    strategy: str
    pool: str


@tool(scope="lb:read", annotations=Annotations("Balancing strategy"))
async def get_lb_strategy(ctx: ToolContext[TrafficPort], args: PoolInput) -> StrategyOutput:
    """The strategy that balances traffic over one of your pools (round_robin until set)."""
    strategy = await ctx.services.traffic.pools.strategy(ctx.caller().user_id, args.pool)
    return StrategyOutput(strategy=strategy, pool=args.pool)


class SetStrategyInput(PoolInput):
    strategy: Strategy = Field(description=f"One of {', '.join(STRATEGIES)}.")


class StrategySet(StrategyOutput):
    message: str


@tool(scope="lb:write", annotations=Annotations("Set balancing strategy", read_only=False))
async def set_lb_strategy(ctx: ToolContext[TrafficPort], args: SetStrategyInput) -> StrategySet:
    """Choose how traffic to one of your pools is spread: round_robin (strict rotation), equal_weighted
    (uniformly random), weighted_round_robin (smooth, by GPU FP16 TFLOPS), least_connections (fewest in
    flight) or least_response_time (lowest measured latency x load, of two random candidates). Instances
    that fail 3 times in a row are skipped for 30 s, then probed."""
    await ctx.services.traffic.pools.set_strategy(ctx.caller().user_id, args.pool, args.strategy)
    return StrategySet(strategy=args.strategy, pool=args.pool, message="Load balancing strategy updated")


class ProxyInput(Input):
    method: Method = "POST"
    target: str | None = Field(
        default=None,
        max_length=140,
        description="Contract id, provider instance id or pool name; omitted: the 'default' pool.",
    )
    path: str = Field(
        pattern=r"^/(?:[^/#\x00-\x20\x7f][^#\x00-\x20\x7f]*)?$",
        max_length=2048,
        examples=["/v1/inference"],
        description="A path (and query) on the instance: no fragment, spaces or control characters.",
    )
    payload: Any = Field(default=None, description="JSON body sent to the instance.")
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, max_length=50, json_schema_extra={"additionalProperties": False}
    )

    def call(self) -> ProxyCall:
        return ProxyCall(self.method, self.path, self.target, self.payload, self.headers)


@asynccontextmanager
async def open_proxy(ctx: ToolContext[TrafficPort], args: ProxyInput) -> AsyncIterator[UpstreamReply]:
    """The streaming form of ``proxy_request`` (the REST route streams the instance's answer as is)."""
    async with ctx.services.traffic.forward(ctx.caller().user_id, args.call()) as reply:
        yield reply


class ProxyOutput(BaseModel):
    status_code: int
    headers: dict[str, str]
    body: Any = Field(description="The instance's JSON answer, or its text.")
    contract_id: str
    instance_id: str | None


@tool(
    scope="lb:write",
    annotations=Annotations(
        "Send a request to my instance", read_only=False, idempotent=False, open_world=True
    ),
)
async def proxy_request(ctx: ToolContext[TrafficPort], args: ProxyInput) -> ProxyOutput:
    """Send an HTTP request to one of your running GPU instances: to `target` (contract id or instance
    id), or to an instance of a pool chosen by the pool's balancing strategy (target omitted = the
    'default' pool). Only your own running instances can be reached. Returns the instance's status,
    headers and body (JSON when it answers JSON); idempotent methods are retried on another instance."""
    limit = ctx.services.settings.proxy_max_buffered_bytes
    async with open_proxy(ctx, args) as reply:
        body = bytearray()
        async for chunk in reply.body:
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(
                    f"the instance's answer is larger than {limit} bytes; use the REST route"
                )
    headers = dict(reply.headers)
    text = body.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text) if "json" in headers.get("content-type", "") else text
    except ValueError:
        parsed = text
    return ProxyOutput(
        status_code=reply.status_code,
        headers=headers,
        body=parsed,
        contract_id=reply.contract.id,
        instance_id=reply.contract.instance_id,
    )
