"""The fleet's settings: one pydantic-settings class read from the environment (12-factor)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# An IPv4 or IPv6 address or a host name: what a listening socket can be bound to.
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")


class SettingsError(Exception):
    """The environment holds a value the fleet cannot run with."""


class Settings(BaseSettings):
    """Every setting the fleet reads. Unset DATABASE_URL/REDIS_URL mean: use the embedded services."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore", frozen=True)

    # Connection URLs carry passwords: none of these is ever in a repr (a traceback, a debug line).
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL", repr=False)
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL", repr=False)
    # Redis with automatic failover: the Sentinels to ask where the primary named REDIS_SENTINEL_MASTER is
    # (`host:port,host:port`). Set, they take the place of REDIS_URL; every client asks again after a failover.
    redis_sentinels: str | None = Field(default=None, validation_alias="REDIS_SENTINELS")
    redis_sentinel_master: str = Field(default="mymaster", validation_alias="REDIS_SENTINEL_MASTER",
                                       min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    # With Sentinels: the password of the primary and its replicas (`requirepass`), and the Sentinels' own.
    redis_password: str | None = Field(default=None, validation_alias="REDIS_PASSWORD", repr=False)
    redis_sentinel_password: str | None = Field(default=None, validation_alias="REDIS_SENTINEL_PASSWORD", repr=False)
    admin_database_url: str | None = Field(default=None, repr=False)
    # A direct (session) connection for LISTEN when DATABASE_URL goes through PgBouncer in transaction mode,
    # where LISTEN cannot work (the next transaction may run on another server connection). Unset: DATABASE_URL.
    listen_database_url: str | None = Field(default=None, repr=False)
    # psycopg prepares a statement after its fifth run on a connection. PgBouncer in transaction mode before
    # 1.21 hands the next transaction another server connection, where that name is unknown or names another
    # statement (DuplicatePreparedStatement, or one statement's rows read as another's): false turns it off.
    db_prepared_statements: bool = True
    home: Path = Path(".intake")
    secret_key: str | None = Field(default=None, repr=False)
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # The ingress.
    public_base_url: str | None = None
    trust_proxy_headers: bool = False
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_email_body_bytes: int = Field(default=26_214_400, ge=1024)
    rate_limit_per_second: float = Field(default=200.0, gt=0)
    rate_limit_burst: int = Field(default=400, ge=1)
    client_error_rate_per_second: float = Field(default=1.0, gt=0)
    client_error_burst: int = Field(default=50, ge=1)
    inbox_cache_size: int = Field(default=10_000, ge=16)
    # How long the ingress trusts a looked-up inbox: disabling it, or its tenant, takes effect within this.
    inbox_cache_seconds: float = Field(default=10.0, ge=0, le=3600)
    # While the web process listens for inbox changes (PostgreSQL tells it of each), an entry lives this long;
    # a change still takes effect at once, and within `inbox_cache_seconds` should the listener die. 0: off.
    inbox_cache_listen_seconds: float = Field(default=300.0, ge=0, le=86_400)
    parse_threads: int = Field(default=4, ge=1, le=64)
    parse_deadline_seconds: float = Field(default=10.0, gt=0)
    # Longer than the idle timeout of the load balancers in front (60 s is common), so the balancer, not the
    # web process, closes an idle connection: otherwise a request sent just as the server closes it is lost.
    keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    commit_batch_max: int = Field(default=256, ge=1, le=5000)
    # Deliveries waiting for a group commit; past this the ingress answers 503 at once (backpressure).
    commit_queue_max: int = Field(default=1024, ge=1, le=100_000)
    ingest_batch_max: int = Field(default=200, ge=1, le=5000)
    enqueue_window_ms: int = Field(default=50, ge=0, le=1000)
    db_pool_size: int = Field(default=4, ge=1, le=100)

    # The admin process: requests per key (a token bucket each), how long a read may run, how long a tenant's
    # storage figures are reused before they are read again.
    admin_rate_limit_per_second: float = Field(default=50.0, gt=0)
    admin_rate_limit_burst: int = Field(default=200, ge=1)
    admin_statement_timeout_ms: int = Field(default=15_000, ge=1, le=3_600_000)
    admin_stats_cache_seconds: float = Field(default=60.0, ge=0, le=86_400)

    # The workers.
    worker_processes: int = Field(default=2, ge=1, le=64)
    worker_threads: int = Field(default=8, ge=1, le=256)
    # Steps below normal CPU priority for `intake worker` (and its local database sessions): see workers.priority.
    worker_nice: int = Field(default=0, ge=0, le=19)
    job_max_retries: int = Field(default=8, ge=0)
    job_min_backoff_ms: int = Field(default=500, ge=0)
    job_max_backoff_ms: int = Field(default=300_000, ge=0)
    job_time_limit_ms: int = Field(default=120_000, ge=1000)
    # A job not started this long after it was first sent is skipped into the failure ledger (replayable).
    job_max_age_ms: int = Field(default=86_400_000, ge=1000)
    heartbeat_timeout_ms: int = Field(default=15_000, ge=1000)
    worker_poll_ms: int = Field(default=50, ge=5, le=10_000)
    worker_metrics_port: int = Field(default=9191, ge=0, le=65535)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    sweep_grace_seconds: float = Field(default=60.0, ge=0)
    ai_sweep_grace_seconds: float = Field(default=600.0, ge=0)
    ai_sweep_horizon_seconds: float = Field(default=3600.0, ge=0)
    clock_metrics_port: int = Field(default=9192, ge=0, le=65535)
    # Where the workers' and the clock's Prometheus endpoints listen: this machine only unless an operator
    # opens them (to be scraped from other machines). `intake run` uses its --host unless this is set.
    # INTAKE_WORKER_METRICS_HOST is its former name, still read.
    metrics_host: str = Field(default="127.0.0.1", validation_alias=AliasChoices(
        "INTAKE_METRICS_HOST", "INTAKE_WORKER_METRICS_HOST", "metrics_host"))
    default_region: str = "US"
    reopen_window_hours: float = Field(default=72.0, ge=0)

    # Webhook endpoints (the change feed pushed): pipelines.webhooks.
    # Delays before each retry of a delivery that did not get a 2xx; after the last, the delivery is failed.
    webhook_retry_schedule: str = "5s,5m,30m,2h,5h,10h,10h"
    # An endpoint failing for this long (no 2xx since the first failure) is disabled.
    webhook_disable_after: str = "5d"
    webhook_allow_private_networks: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Deliveries one job sends at once (each to a different conversation, in parallel).
    webhook_batch: int = Field(default=32, ge=1, le=256)
    # How often the dispatcher asks which endpoints have work, besides being woken by each change.
    webhook_sweep_seconds: float = Field(default=2.0, gt=0, le=3600)

    # Retention defaults (a tenant's settings.retention overrides each); the clock applies them in batches.
    retention_event_body_days: int = Field(default=30, ge=1, le=36_500)
    retention_failure_days: int = Field(default=30, ge=1, le=36_500)
    retention_audit_days: int = Field(default=365, ge=30, le=36_500)  # the audit trail's floor: 30 days
    # At least 32: a month's usage rows stay whole while its AI budget is being counted.
    retention_ai_usage_days: int = Field(default=90, ge=32, le=36_500)
    retention_change_days: int = Field(default=30, ge=1, le=36_500)
    # A change stream's comment when nothing happened for this long (keeps proxies from closing it).
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=3600)
    retention_batch: int = Field(default=1000, ge=10, le=50_000)
    retention_interval_seconds: float = Field(default=600.0, gt=0)

    # Replies sent through the channel (the `outbound` queue): each provider's API base, so tests and staging
    # can point them at local servers; how long a call may take and how much of an answer is read.
    twilio_api_base: str = "https://api.twilio.com"
    meta_api_base: str = "https://graph.facebook.com"
    meta_api_version: str = Field(default="v21.0", pattern=r"^v[0-9]{1,3}\.[0-9]{1,3}$")
    telegram_api_base: str = "https://api.telegram.org"
    postmark_api_base: str = "https://api.postmarkapp.com"
    mailgun_api_base: str = "https://api.mailgun.net"
    sendgrid_api_base: str = "https://api.sendgrid.com"
    outbound_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    outbound_max_response_bytes: int = Field(default=65_536, ge=1024, le=10_485_760)
    # A claimed reply whose worker died is sent again after this long (see pipelines.outbound).
    outbound_claim_seconds: float = Field(default=300.0, ge=1, le=86_400)
    # An inbox's `reply_url` that resolves to a loopback, private or link-local address is refused unless set.
    outbound_allow_private_networks: bool = False

    # AI.
    ai_provider: Literal["local", "openai"] = "local"
    ai_base_url: str = "https://api.openai.com/v1"
    ai_api_key: str | None = Field(default=None, repr=False)
    ai_model: str = "gpt-4o-mini"
    ai_timeout_seconds: float = Field(default=30.0, gt=0)
    ai_max_retries: int = Field(default=3, ge=0, le=10)
    ai_rate_limit_per_second: int = Field(default=20, ge=1)
    # A tenant's classifier is trained again this long after its examples change (changes meanwhile coalesce).
    ai_train_delay_seconds: float = Field(default=30.0, ge=0, le=86_400)
    # USD per million tokens, in and out, by model.
    ai_prices: dict[str, tuple[float, float]] = Field(default_factory=lambda: {
        "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60),
        "text-embedding-3-small": (0.02, 0.0), "text-embedding-3-large": (0.13, 0.0),
    })
    embedding_model: str = "local-ngram-v1"
    embedding_dim: int = Field(default=384, ge=8, le=4000)

    @field_validator("database_url", "admin_database_url", "listen_database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("must be a PostgreSQL URL such as postgresql://user:password@host:5432/dbname")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a Redis URL such as redis://host:6379/0")
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        delays = [part.strip() for part in value.split(",") if part.strip()]
        if not delays or len(delays) > 50:
            raise ValueError("must list 1 to 50 delays such as 5s,5m,30m,2h")
        for delay in delays:
            duration_seconds(delay)
        return ",".join(delays)

    @field_validator("webhook_disable_after")
    @classmethod
    def _check_disable_after(cls, value: str) -> str:
        duration_seconds(value)
        return value.strip()

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return tuple(duration_seconds(d) for d in self.webhook_retry_schedule.split(","))

    @property
    def webhook_disable_after_seconds(self) -> float:
        return duration_seconds(self.webhook_disable_after)

    @field_validator("metrics_host")
    @classmethod
    def _check_metrics_host(cls, value: str) -> str:
        if not HOST.fullmatch(value):
            raise ValueError("must be an IP address or a host name such as 127.0.0.1, 10.0.0.5 or 0.0.0.0")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if len(value) > 4096:
            raise ValueError("is longer than 4096 characters")
        for address in value.split(","):
            _sentinel_address(address)
        return value

    @field_validator("default_region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if len(value) != 2 or not value.isalpha():
            raise ValueError("must be a two-letter ISO 3166 region code such as US or FI")
        return value.upper()

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty without Sentinels."""
        return [_sentinel_address(a) for a in self.redis_sentinels.split(",")] if self.redis_sentinels else []

    @property
    def redis_configured(self) -> bool:
        """Whether Redis is given (a URL or Sentinels) rather than embedded."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def listen_url(self) -> str | None:
        """Where LISTEN connects: INTAKE_LISTEN_DATABASE_URL, else DATABASE_URL (None: embedded)."""
        return self.listen_database_url or self.database_url

    @property
    def embedded(self) -> bool:
        return self.database_url is None or not self.redis_configured


def _sentinel_address(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for an IPv6 address) of one Sentinel."""
    host, sep, port = address.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536 \
            or not host.isprintable() or any(c in host for c in " /@[]"):
        raise ValueError(f"must be Sentinel addresses as host:port,host:port (not {address[:100]!r})")
    return host, int(port)


UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def duration_seconds(value: str) -> float:
    """`500ms`, `5s`, `5m`, `2h`, `5d` or a bare number of seconds, as seconds (ValueError otherwise)."""
    text = value.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h", "d") if text.endswith(u)), "")
    number = text[: len(text) - len(unit)] if unit else text
    try:
        seconds = float(number) * UNITS.get(unit, 1.0)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration such as 5s, 5m, 2h or 5d") from None
    if not 0 <= seconds <= 365 * 86_400 or seconds != seconds:
        raise ValueError(f"{value!r} must be between 0 and 365 days")
    return seconds


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into one readable message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            env = name if name.isupper() else f"INTAKE_{name.upper()}"  # an alias is the variable itself
            problems.append(f"{env}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
