"""Platform health and statistics (public: no login needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, Field

from aiserve_mcp.tools.common import NoInput
from aiserve_mcp.tools.ports import GpuPort, ServingPort, SystemPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool
from aiserve_mcp.worker.bundle import BundleInfo, worker_bundle

CHECK_TIMEOUT_S = 2.0
REDIS_DOWN = (
    "rate limits are counted per server process and live events reach only this process's subscribers; "
    "spending checks and shared load-balancer state answer 503 until Redis answers"
)
DATABASE_DOWN = "every request that needs an account or stored state answers 503 until the database answers"


class DependencyCheck(BaseModel):
    healthy: bool
    configured: bool = True
    response_time_ms: float | None = Field(default=None, description="Measured round trip; null if not run.")
    error: str | None = None
    impact: str | None = Field(default=None, description="What works differently while it is down.")


class HealthChecks(BaseModel):
    database: DependencyCheck
    redis: DependencyCheck


class HealthOutput(BaseModel):
    status: str = Field(description="'ok' when every configured dependency answers, else 'unhealthy'.")
    timestamp: datetime
    checks: HealthChecks


async def _timed(probe: Awaitable[object]) -> DependencyCheck:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except Exception as exc:
        return DependencyCheck(healthy=False, error=type(exc).__name__)
    return DependencyCheck(healthy=True, response_time_ms=round((time.perf_counter() - started) * 1000, 3))


@tool(scope=None, annotations=Annotations("Health"))
async def system_health(ctx: ToolContext[SystemPort], args: NoInput) -> HealthOutput:
    """Check the platform's dependencies: the database always, Redis when one is configured. Status is
    'unhealthy' (HTTP 503) when a configured dependency does not answer within 2 seconds; its check then
    names the error and what works differently until it is back."""
    services = ctx.services
    database = await _timed(services.db.ping())
    if not database.healthy:
        database.impact = DATABASE_DOWN
    if services.redis is None:
        redis = DependencyCheck(healthy=True, configured=False)
    else:
        redis = await _timed(services.redis.ping())
        if not redis.healthy:
            redis.impact = REDIS_DOWN
    status = "ok" if database.healthy and redis.healthy else "unhealthy"
    return HealthOutput(
        status=status, timestamp=datetime.now(UTC), checks=HealthChecks(database=database, redis=redis)
    )


class StatsOutput(BaseModel):
    timestamp: datetime
    requests_total: int = Field(description="HTTP requests this server process has received.")
    requests_per_second: float = Field(description="Mean rate over the last 60 seconds.")
    active_connections: int = Field(description="HTTP requests and streams open now.")
    gpu_instances_active: int = Field(description="Rented GPU instances provisioning or running now.")
    models_loaded: int = Field(description="Models loaded and ready to serve.")
    uptime_s: float


class StatsPorts(SystemPort, GpuPort, ServingPort, Protocol):
    """What the statistics count: this process, the active GPU contracts and the models loaded."""


@tool(scope=None, annotations=Annotations("Statistics"))
async def system_stats(ctx: ToolContext[StatsPorts], args: NoInput) -> StatsOutput:
    """Live statistics of this server process: request totals and rate, open connections, active GPU
    instances and loaded models."""
    telemetry = ctx.services.telemetry
    return StatsOutput(
        timestamp=datetime.now(UTC),
        requests_total=telemetry.requests_total,
        requests_per_second=telemetry.requests_per_second(),
        active_connections=telemetry.active_connections,
        gpu_instances_active=await ctx.services.market.contracts.count_active(),
        models_loaded=ctx.services.model_host.loaded,
        uptime_s=round(time.time() - ctx.services.started_at, 3),
    )


async def worker_bundle_file(ctx: ToolContext[SystemPort]) -> BundleInfo:
    """The worker bundle rented machines install (``GET /api/v1/worker/bundle``): a wheel of this server's
    own installation, built once per process. Public: it holds no secrets, only the platform's code."""
    return await worker_bundle(ctx.services.settings.data_dir).info()
