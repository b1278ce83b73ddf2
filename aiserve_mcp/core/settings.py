"""All configuration, read from ``AISERVE_*`` environment variables (the only module that reads them)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Server settings. Every field maps to ``AISERVE_<NAME>``; the README lists them with defaults."""

    model_config = SettingsConfigDict(env_prefix="AISERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".aiserve")
    database_url: str | None = None
    database_timeout_s: float = Field(default=10.0, gt=0)
    redis_url: str | None = None
    redis_timeout_s: float = Field(default=2.0, gt=0)
    redis_prefix: str = "aiserve:"
    jwt_secret: SecretStr | None = None
    access_token_ttl_s: int = Field(default=86_400, gt=0)
    refresh_token_ttl_s: int = Field(default=30 * 86_400, gt=0)
    read_cache_ttl_s: float = Field(default=2.0, ge=0)
    rate_limit: int = Field(default=100, gt=0)
    rate_limit_window_s: int = Field(default=60, gt=0)
    auth_rate_limit: int = Field(default=20, gt=0)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(LOOPBACK_HOSTS))
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(LOOPBACK_ORIGINS))
    trust_forwarded_for: bool = False
    max_request_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_binary_body_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    api_key: SecretStr | None = None
    mcp_conformance_fixtures: bool = False
    mcp_stateless: bool = False
    vastai_url: str = "https://console.vast.ai"
    vastai_api_key: SecretStr | None = None
    ionet_url: str = "https://api.io.solutions"
    ionet_api_key: SecretStr | None = None
    local_price_per_hour: Decimal = Field(default=Decimal(0), ge=0)
    local_cpu_slots: int = Field(default=2, ge=0, le=64)
    provider_timeout_s: float = Field(default=20.0, gt=0)
    offer_cache_ttl_s: float = Field(default=30.0, ge=0)
    expiry_check_interval_s: float = Field(default=30.0, gt=0)
    proxy_timeout_s: float = Field(default=60.0, gt=0)
    proxy_allow_private: bool = False
    proxy_max_buffered_bytes: int = Field(default=1024 * 1024, gt=0)
    spending_limits: Annotated[dict[str, Decimal], NoDecode] = Field(
        default_factory=lambda: {
            "hourly": Decimal(100),
            "daily": Decimal(500),
            "weekly": Decimal(2000),
            "monthly": Decimal(5000),
        }
    )
    approval_ttl_s: float = Field(default=3600.0, gt=0)
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    billing_sandbox: bool = False
    model_quota_bytes: int = Field(default=100 * 2**30, gt=0)
    model_max_file_bytes: int = Field(default=10 * 2**30, gt=0)
    model_uploads_per_hour: int = Field(default=50, gt=0)
    model_uploads_per_day: int = Field(default=500, gt=0)
    model_threads: int | None = Field(default=None, gt=0)
    model_max_batch: int = Field(default=64, ge=1, le=4096)
    model_max_replicas: int = Field(default=4, ge=1, le=64)
    model_worker_timeout_s: float = Field(default=60.0, gt=0)
    model_fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    model_fetch_timeout_s: float = Field(default=300.0, gt=0)
    oauth_access_token_ttl_s: int = Field(default=3600, gt=0)
    oauth_client_fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    oauth_client_fetch_ca_file: Path | None = None
    approval_webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    approval_webhook_timeout_s: float = Field(default=5.0, gt=0)
    approval_webhook_attempts: int = Field(default=3, ge=1, le=10)
    lb_eject_after: int = Field(default=3, ge=1)
    lb_eject_for_s: float = Field(default=30.0, gt=0)
    events_metrics_interval_s: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"

    _split_hosts = field_validator(
        "allowed_hosts",
        "allowed_origins",
        "model_fetch_allowed_hosts",
        "oauth_client_fetch_allowed_hosts",
        "approval_webhook_allowed_hosts",
        mode="before",
    )(_split_csv)

    @field_validator("spending_limits", mode="before")
    @classmethod
    def _limits(cls, value: object) -> object:
        """``hourly=100,daily=500,72h=800`` (USD per window)."""
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("use window=amount pairs, e.g. hourly=100,daily=500")
            return {name.strip(): amount.strip() for name, amount in pairs}
        return value

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'aiserve.db'}"
