"""The services one server process holds: built once from settings, shared by every surface."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import anyio
import httpx
from pydantic import SecretStr
from redis.asyncio import BlockingConnectionPool, Redis

from aiserve_mcp.accounts.oauth import OAuthService
from aiserve_mcp.accounts.oauth_registry import ClientRegistry
from aiserve_mcp.accounts.security import TokenSigner, load_or_create_secret
from aiserve_mcp.accounts.service import AccountService
from aiserve_mcp.core.events import Event, EventBus, MemoryEventBus, RedisEventBus
from aiserve_mcp.core.leases import Leases, MemoryLeases, RedisLeases
from aiserve_mcp.core.rate_windows import MemoryRateWindows, RateWindows, RedisRateWindows
from aiserve_mcp.core.ratelimit import RateLimiter
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.core.telemetry import Telemetry
from aiserve_mcp.gpu.catalog import default_catalog
from aiserve_mcp.gpu.contracts import ContractStore
from aiserve_mcp.gpu.market import GpuMarket
from aiserve_mcp.gpu.preferences import GpuPreferenceStore
from aiserve_mcp.gpu.providers.base import Provider
from aiserve_mcp.gpu.providers.ionet import IoNetProvider
from aiserve_mcp.gpu.providers.local import LocalProvider
from aiserve_mcp.gpu.providers.vastai import VastAiProvider
from aiserve_mcp.money.approval_webhooks import ApprovalWebhookStore
from aiserve_mcp.money.approvals import ApprovalService
from aiserve_mcp.money.costs import CostGate
from aiserve_mcp.money.guardrails import Guardrails
from aiserve_mcp.money.ledger import Ledger
from aiserve_mcp.money.payments.base import PaymentGateway
from aiserve_mcp.money.payments.sandbox import SandboxGateway
from aiserve_mcp.money.payments.stripe_gateway import StripeGateway
from aiserve_mcp.money.spend_store.base import SpendStore
from aiserve_mcp.money.spend_store.redis_store import RedisSpendStore
from aiserve_mcp.money.spend_store.sql import SqlSpendStore
from aiserve_mcp.protocols.oauth.urls import OAuthUrls
from aiserve_mcp.serving.fetch import ModelFetcher, fetch_client
from aiserve_mcp.serving.host import ModelHost
from aiserve_mcp.serving.store import ModelStore
from aiserve_mcp.serving.upload_links import UploadLinkStore
from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.migrate import upgrade
from aiserve_mcp.tools.upload_links import public_base_url
from aiserve_mcp.traffic.approval_webhooks import ApprovalWebhooks
from aiserve_mcp.traffic.balancer import Balancer, LoadStore, MemoryLoadStore, RedisLoadStore
from aiserve_mcp.traffic.documents import DocumentFetcher
from aiserve_mcp.traffic.egress import isolated_client
from aiserve_mcp.traffic.pools import PoolStore
from aiserve_mcp.traffic.service import Traffic
from aiserve_mcp.worker.bundle import WorkerLaunch

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    accounts: AccountService
    rate_limiter: RateLimiter
    telemetry: Telemetry
    redis: Redis | None
    gpu_preferences: GpuPreferenceStore
    market: GpuMarket
    traffic: Traffic
    costs: CostGate
    model_store: ModelStore
    upload_links: UploadLinkStore
    model_host: ModelHost
    model_fetcher: ModelFetcher
    oauth: OAuthService
    client_documents: DocumentFetcher
    events: EventBus
    payments: PaymentGateway | None
    outbound: httpx.AsyncClient
    proxy_client: httpx.AsyncClient
    approval_webhooks: ApprovalWebhooks
    approvals: ApprovalService
    started_at: float = field(default_factory=time.time)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        """Build the services; nothing connects until first use. Call ``migrate()`` before serving."""
        db = Database(settings.effective_database_url, settings.database_timeout_s)
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        signer = TokenSigner(load_or_create_secret(secret, settings.data_dir), settings.access_token_ttl_s)
        redis = (
            Redis(
                connection_pool=BlockingConnectionPool.from_url(
                    settings.redis_url,
                    max_connections=200,
                    timeout=settings.redis_timeout_s,
                    socket_connect_timeout=settings.redis_timeout_s,
                )
            )
            if settings.redis_url
            else None
        )
        windows: RateWindows = (
            RedisRateWindows(redis, settings.redis_prefix) if redis is not None else MemoryRateWindows()
        )
        outbound = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.provider_timeout_s), follow_redirects=False, trust_env=False
        )
        proxy_client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200), trust_env=False
        )
        loads: LoadStore = (
            RedisLoadStore(redis, settings.redis_prefix + "lb:") if redis is not None else MemoryLoadStore()
        )
        telemetry = Telemetry()
        events: EventBus = (
            RedisEventBus(redis, settings.redis_prefix + "events") if redis is not None else MemoryEventBus()
        )
        spend_store: SpendStore = (
            RedisSpendStore(redis, settings.redis_prefix + "spend:")
            if redis is not None
            else SqlSpendStore(db)
        )
        costs = CostGate(Ledger(db), Guardrails(db, spend_store, settings.spending_limits, telemetry, events))
        leases: Leases = RedisLeases(redis, settings.redis_prefix) if redis is not None else MemoryLeases()
        market = GpuMarket(
            ContractStore(db, events),
            _providers(settings, outbound),
            default_catalog(),
            costs,
            leases,
            cache_ttl_s=settings.offer_cache_ttl_s,
            timeout_s=settings.provider_timeout_s,
        )
        balancer = Balancer(
            loads, eject_after=settings.lb_eject_after, eject_for_s=settings.lb_eject_for_s, clock=time.time
        )
        model_store = ModelStore(db, settings, events)
        traffic = Traffic(
            market,
            PoolStore(db),
            balancer,
            proxy_client,
            timeout_s=settings.proxy_timeout_s,
            allow_private=settings.proxy_allow_private,
        )
        oauth_resources = OAuthUrls.from_settings(settings).resources
        accounts = AccountService(
            db,
            signer,
            settings.refresh_token_ttl_s,
            settings.read_cache_ttl_s,
            oauth_audiences=oauth_resources,
        )
        client_documents = DocumentFetcher(
            isolated_client(settings.oauth_client_fetch_ca_file),
            settings.oauth_client_fetch_allowed_hosts,
            setting="AISERVE_OAUTH_CLIENT_FETCH_ALLOWED_HOSTS",
            what="client metadata document",
            timeout_s=5.0,
            max_bytes=64 * 1024,
        )
        approval_webhooks = ApprovalWebhooks(
            ApprovalWebhookStore(db),
            isolated_client(),
            settings.approval_webhook_allowed_hosts,
            timeout_s=settings.approval_webhook_timeout_s,
            attempts=settings.approval_webhook_attempts,
        )
        return cls(
            settings=settings,
            db=db,
            accounts=accounts,
            rate_limiter=RateLimiter(windows, settings.rate_limit_window_s, telemetry),
            telemetry=telemetry,
            redis=redis,
            gpu_preferences=GpuPreferenceStore(db),
            market=market,
            traffic=traffic,
            costs=costs,
            model_store=model_store,
            upload_links=UploadLinkStore(db),
            model_host=ModelHost(
                model_store,
                telemetry,
                events,
                traffic,
                proxy_client,
                threads=settings.model_threads,
                max_batch=settings.model_max_batch,
                worker_timeout_s=settings.model_worker_timeout_s,
            ),
            model_fetcher=ModelFetcher(
                fetch_client(), settings.model_fetch_allowed_hosts, settings.model_fetch_timeout_s
            ),
            oauth=OAuthService(
                db,
                signer,
                accounts,
                ClientRegistry(db, signer, client_documents),
                oauth_resources,
                settings.oauth_access_token_ttl_s,
                settings.refresh_token_ttl_s,
            ),
            client_documents=client_documents,
            events=events,
            payments=_payments(settings),
            outbound=outbound,
            proxy_client=proxy_client,
            approval_webhooks=approval_webhooks,
            approvals=ApprovalService(
                db,
                approval_webhooks.tap(events),
                ttl_s=settings.approval_ttl_s,
                base_url=public_base_url(settings),
            ),
        )

    async def migrate(self) -> None:
        """Apply pending database migrations (runs Alembic in a worker thread)."""
        await anyio.to_thread.run_sync(upgrade, self.db.url)
        log.info("database %s is at the latest schema", self.db.engine.url.render_as_string())

    async def metrics_snapshot(self) -> Event:
        """``metrics.snapshot`` for every subscriber: this process's numbers, as ``/stats`` reports them."""
        telemetry = self.telemetry
        data = {
            "pid": os.getpid(),
            "requests_total": telemetry.requests_total,
            "requests_per_second": telemetry.requests_per_second(),
            "active_connections": telemetry.active_connections,
            "gpu_instances_active": await self.market.contracts.count_active(),
            "models_loaded": self.model_host.loaded,
            "uptime_s": round(time.time() - self.started_at, 3),
        }
        return Event("metrics", "metrics.snapshot", data)

    async def close(self) -> None:
        await self.model_host.aclose()
        await self.events.aclose()
        await self.market.aclose()
        await self.outbound.aclose()
        await self.proxy_client.aclose()
        await self.model_fetcher.aclose()
        await self.client_documents.aclose()
        await self.approval_webhooks.aclose()
        if self.payments is not None:
            await self.payments.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.dispose()


def _secret(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret else None


def _payments(settings: Settings) -> PaymentGateway | None:
    """Stripe when its key is set; the sandbox only when explicitly enabled; otherwise none."""
    if settings.stripe_api_key is not None:
        return StripeGateway(
            settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            webhook_secret=_secret(settings.stripe_webhook_secret),
        )
    if settings.billing_sandbox:
        return SandboxGateway(_secret(settings.stripe_webhook_secret), base_url=public_base_url(settings))
    return None


def _providers(settings: Settings, client: httpx.AsyncClient) -> dict[str, Provider]:
    key = _secret
    launch = WorkerLaunch.from_settings(settings)  # how rented machines fetch and start the worker
    return {
        "vastai": VastAiProvider(client, settings.vastai_url, key(settings.vastai_api_key), launch),
        "ionet": IoNetProvider(client, settings.ionet_url, key(settings.ionet_api_key), launch),
        "local": LocalProvider(settings.local_price_per_hour, settings.local_cpu_slots, settings.data_dir),
    }
