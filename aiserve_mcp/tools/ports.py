"""What tools and protocol adapters may use of the running server, as typed ports.

The composition root (``aiserve_mcp.bootstrap.Services``) provides them; nothing below it imports the
root, so a tool depends on the ports it reads, not on how the server is assembled."""

from __future__ import annotations

from typing import Protocol

import httpx
from redis.asyncio import Redis

from aiserve_mcp.accounts.service import AccountService
from aiserve_mcp.core.events import Event, EventBus
from aiserve_mcp.core.ratelimit import RateLimiter
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.core.telemetry import Telemetry
from aiserve_mcp.gpu.market import GpuMarket
from aiserve_mcp.gpu.preferences import GpuPreferenceStore
from aiserve_mcp.money.costs import CostGate
from aiserve_mcp.money.payments.base import PaymentGateway
from aiserve_mcp.serving.host import ModelHost
from aiserve_mcp.serving.store import ModelStore
from aiserve_mcp.storage.database import Database
from aiserve_mcp.traffic.service import Traffic


class Ports(Protocol):
    """Everything a surface offers its tools, read-only."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def accounts(self) -> AccountService: ...
    @property
    def rate_limiter(self) -> RateLimiter: ...
    @property
    def telemetry(self) -> Telemetry: ...
    @property
    def redis(self) -> Redis | None: ...
    @property
    def gpu_preferences(self) -> GpuPreferenceStore: ...
    @property
    def market(self) -> GpuMarket: ...
    @property
    def traffic(self) -> Traffic: ...
    @property
    def costs(self) -> CostGate: ...
    @property
    def model_store(self) -> ModelStore: ...
    @property
    def model_host(self) -> ModelHost: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def payments(self) -> PaymentGateway | None: ...
    @property
    def proxy_client(self) -> httpx.AsyncClient: ...
    @property
    def started_at(self) -> float: ...

    async def metrics_snapshot(self) -> Event: ...
