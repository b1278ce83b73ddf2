"""What tools and protocol adapters may use of the running server, as typed ports.

Each tool area declares the narrow ports it needs in its tools' signatures, ``ToolContext[GpuPort]`` say;
its tools then reach those services and nothing else (mypy holds them to it), and a reader sees a tool's
dependencies at its signature. ``Ports`` composes every narrow port with what the protocol adapters use
themselves; it is what the adapters hold and pass in a ``ToolContext``.

The composition root (``aiserve_mcp.bootstrap.Services``) provides them; nothing below it imports the
root, so a tool depends on the ports it reads, not on how the server is assembled."""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis

from aiserve_mcp.accounts.oauth import OAuthService
from aiserve_mcp.accounts.service import AccountService
from aiserve_mcp.core.events import EventBus
from aiserve_mcp.core.ratelimit import RateLimiter
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.core.telemetry import Telemetry
from aiserve_mcp.gpu.market import GpuMarket
from aiserve_mcp.gpu.preferences import GpuPreferenceStore
from aiserve_mcp.money.approvals import ApprovalService
from aiserve_mcp.money.costs import CostGate
from aiserve_mcp.money.payments.base import PaymentGateway
from aiserve_mcp.serving.fetch import ModelFetcher
from aiserve_mcp.serving.host import ModelHost
from aiserve_mcp.serving.store import ModelStore
from aiserve_mcp.serving.upload_links import UploadLinkStore
from aiserve_mcp.storage.database import Database
from aiserve_mcp.traffic.approval_webhooks import ApprovalWebhooks
from aiserve_mcp.traffic.service import Traffic


class NoPorts(Protocol):
    """What a tool that uses no service of the server declares: it answers from its arguments alone."""


class AccountsPort(Protocol):
    """User accounts, logins and API keys, with the rate limiter and settings that guard logins."""

    @property
    def accounts(self) -> AccountService: ...
    @property
    def rate_limiter(self) -> RateLimiter: ...
    @property
    def settings(self) -> Settings: ...


class GpuPort(Protocol):
    """The GPU market (offers and rented contracts) and each user's GPU preferences."""

    @property
    def market(self) -> GpuMarket: ...
    @property
    def gpu_preferences(self) -> GpuPreferenceStore: ...


class TrafficPort(Protocol):
    """Load balancing over each user's instances and the requests proxied to them."""

    @property
    def traffic(self) -> Traffic: ...
    @property
    def settings(self) -> Settings: ...


class MoneyPort(Protocol):
    """Credits (the ledger), spending guardrails, and the payment gateway when one is configured."""

    @property
    def costs(self) -> CostGate: ...
    @property
    def payments(self) -> PaymentGateway | None: ...


class ServingPort(Protocol):
    """Uploaded models (their store), the fetcher that downloads them from URLs, and the host that loads
    and runs them."""

    @property
    def model_store(self) -> ModelStore: ...
    @property
    def upload_links(self) -> UploadLinkStore: ...
    @property
    def model_host(self) -> ModelHost: ...
    @property
    def model_fetcher(self) -> ModelFetcher: ...
    @property
    def settings(self) -> Settings: ...


class SystemPort(Protocol):
    """This server process: the dependencies its health checks ping and its own numbers."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def redis(self) -> Redis | None: ...
    @property
    def telemetry(self) -> Telemetry: ...
    @property
    def started_at(self) -> float: ...


class KeyBudgetPorts(AccountsPort, MoneyPort, Protocol):
    """API keys and the spending limits of each key."""


class OAuthPort(Protocol):
    """The OAuth authorization server: clients, and the grants that connect them to people's accounts."""

    @property
    def oauth(self) -> OAuthService: ...


class CheckoutPorts(MoneyPort, Protocol):
    """Credits and the payment gateway, with the settings that give this server's public address (where
    a checkout page sends its payer back to)."""

    @property
    def settings(self) -> Settings: ...


class ApprovalsPort(Protocol):
    """Approval policies, and the approvals waiting for (or carried out after) their owner's decision."""

    @property
    def approvals(self) -> ApprovalService: ...


class ApprovalWebhooksPort(Protocol):
    """Each user's approval webhook: where their new approvals are POSTed."""

    @property
    def approval_webhooks(self) -> ApprovalWebhooks: ...


class Ports(
    AccountsPort,
    GpuPort,
    TrafficPort,
    MoneyPort,
    ServingPort,
    SystemPort,
    OAuthPort,
    ApprovalsPort,
    ApprovalWebhooksPort,
    Protocol,
):
    """Everything a surface offers its tools, read-only: every narrow port, and the event bus the
    adapters stream from."""

    @property
    def events(self) -> EventBus: ...
