"""Per-process resources for the workers, created on first use (after a fork, never before)."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, event

from config import get_settings
from db.engine import make_engine
from pipelines.ingest import IngestPolicy
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


def ingest_policy() -> IngestPolicy:
    settings = get_settings()
    return IngestPolicy(default_region=settings.default_region,
                        reopen_window=timedelta(hours=settings.reopen_window_hours))
