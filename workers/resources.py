"""Per-process resources for the workers, created on first use (after a fork, never before)."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, event

from config import Settings, get_settings
from db.engine import make_engine
from pipelines.crypto import SecretBox
from pipelines.ingest import IngestPolicy
from pipelines.outbound import http as outbound_http
from pipelines.webhooks.delivery import Policy
from workers import priority

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}


def _database_url(admin: bool) -> str:
    settings = get_settings()
    url = settings.admin_database_url if admin else settings.database_url
    if url is None:
        from workers.embedded.runtime import resolve

        runtime = resolve(settings)
        url = runtime.admin_database_url if admin else runtime.database_url
    return url


def engine(*, admin: bool = False) -> Engine:
    """This process's engine: the fleet role, or with `admin` the owner role for cross-tenant upkeep."""
    key = (os.getpid(), "admin" if admin else "app")
    with _lock:
        found = _engines.get(key)
        if found is None:
            settings = get_settings()
            found = make_engine(_database_url(admin), prepared_statements=settings.db_prepared_statements,
                                pool_size=max(2, settings.worker_threads), application_name="intake-worker")
            if priority.current() > 0:
                # A worker below normal priority (`intake worker --nice`) has its backends follow it.
                event.listen(found, "connect", _renice_backend)
            _engines[key] = found
        return found


def _renice_backend(dbapi_connection: Any, record: Any) -> None:
    info = dbapi_connection.info
    priority.renice_backend(info.backend_pid, info.host)


def outbound_client() -> httpx.Client:
    """This process's HTTP client for the providers' send APIs (pipelines.outbound.http), shared by its threads."""
    key = os.getpid()
    with _lock:
        found = _outbound_clients.get(key)
        if found is None:
            found = _outbound_clients[key] = outbound_http.client(get_settings())
        return found


# One client of each kind per process (keyed by pid: a forked child builds its own).
_outbound_clients: dict[int, httpx.Client] = {}


def ingest_policy(settings: Settings | None = None) -> IngestPolicy:
    """The ingest policy of the fleet's settings (this process's, unless given)."""
    settings = settings or get_settings()
    return IngestPolicy(default_region=settings.default_region,
                        reopen_window=timedelta(hours=settings.reopen_window_hours))


def secret_box() -> SecretBox:
    """The box that opens sealed secrets (inboxes', webhook endpoints'): INTAKE_SECRET_KEY, or the embedded one."""
    key = get_settings().secret_key
    if key is None:
        from workers.embedded.runtime import resolve

        key = resolve(get_settings()).require_secret_key()
    return SecretBox(key)


def webhook_policy() -> Policy:
    settings = get_settings()
    return Policy(retry_delays=settings.webhook_retry_delays,
                  disable_after=timedelta(seconds=settings.webhook_disable_after_seconds),
                  timeout=settings.webhook_timeout_seconds, batch=settings.webhook_batch,
                  allow_private=settings.webhook_allow_private_networks)
