"""The fleet's settings: one pydantic-settings class read from the environment (12-factor)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """The environment holds a value the fleet cannot run with."""


class Settings(BaseSettings):
    """Every setting the fleet reads. Unset DATABASE_URL/REDIS_URL mean: use the embedded services."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore", frozen=True)

    # Connection URLs carry passwords: none of these is ever in a repr (a traceback, a debug line).
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL", repr=False)
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL", repr=False)
    admin_database_url: str | None = Field(default=None, repr=False)
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
    worker_metrics_host: str = "0.0.0.0"  # noqa: S104  (scraped from other machines)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    sweep_grace_seconds: float = Field(default=60.0, ge=0)
    ai_sweep_grace_seconds: float = Field(default=600.0, ge=0)
    ai_sweep_horizon_seconds: float = Field(default=3600.0, ge=0)
    clock_metrics_port: int = Field(default=9192, ge=0, le=65535)
    default_region: str = "US"
    reopen_window_hours: float = Field(default=72.0, ge=0)

    # Retention defaults (a tenant's settings.retention overrides each); the clock applies them in batches.
    retention_event_body_days: int = Field(default=30, ge=1, le=36_500)
    retention_failure_days: int = Field(default=30, ge=1, le=36_500)
    retention_audit_days: int = Field(default=365, ge=1, le=36_500)
    # At least 32: a month's usage rows stay whole while its AI budget is being counted.
    retention_ai_usage_days: int = Field(default=90, ge=32, le=36_500)
    retention_batch: int = Field(default=1000, ge=10, le=50_000)
    retention_interval_seconds: float = Field(default=600.0, gt=0)

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

    @field_validator("database_url", "admin_database_url")
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

    @field_validator("default_region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if len(value) != 2 or not value.isalpha():
            raise ValueError("must be a two-letter ISO 3166 region code such as US or FI")
        return value.upper()

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.redis_url is None


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into one readable message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            env = name if name in ("DATABASE_URL", "REDIS_URL") else f"INTAKE_{name.upper()}"
            problems.append(f"{env}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
