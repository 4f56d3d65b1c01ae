"""Every Redis client of the fleet, built here: one URL, or the primary that Sentinels name.

With REDIS_SENTINELS set, a client is redis-py's `Sentinel(...).master_for(REDIS_SENTINEL_MASTER)`: each new
connection asks the Sentinels where the primary is, and a connection to a server that stopped being the
primary (dead, or back as a replica answering READONLY) is dropped. So after a failover every process (the
web's enqueues, the broker and its consumers, the AI rate limits, the admin's job queues, the CLI) follows
the new primary on its next command, without a restart. dramatiq's consumers treat the failed command as a
closed connection and start again; jobs a dead primary had not yet copied to its replica are lost from
Redis, not from PostgreSQL: their events are still stored, and the clock's sweeper sends them again.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from config import Settings

# How long a question to one Sentinel may take before the next is asked.
SENTINEL_TIMEOUT_SECONDS = 1.0


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
                               "socket_timeout": SENTINEL_TIMEOUT_SECONDS}
    if settings.redis_sentinel_password:
        options["password"] = settings.redis_sentinel_password
    return options


def _primary_options(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    return {**options, "password": settings.redis_password} if settings.redis_password else options


def client(settings: Settings, url: str | None, **options: Any) -> redis.Redis:
    """A client of the primary: through the Sentinels when REDIS_SENTINELS is set, else `url` (REDIS_URL, or
    the embedded Redis a Runtime found). `options` are redis-py's connection options (timeouts)."""
    if settings.redis_sentinels:
        sentinel = Sentinel(settings.sentinels, sentinel_kwargs=_sentinel_options(settings))
        primary: redis.Redis = sentinel.master_for(settings.redis_sentinel_master,
                                                   **_primary_options(settings, options))
        return primary
    if not url:
        raise ValueError("neither REDIS_SENTINELS nor a Redis URL is given")
    return redis.Redis.from_url(url, **options)


def async_client(settings: Settings, url: str | None, **options: Any) -> aioredis.Redis:
    """As `client`, for asyncio (the web process)."""
    if settings.redis_sentinels:
        sentinel = AsyncSentinel(settings.sentinels, sentinel_kwargs=_sentinel_options(settings))
        found: aioredis.Redis = sentinel.master_for(settings.redis_sentinel_master,
                                                    **_primary_options(settings, options))
        return found
    if not url:
        raise ValueError("neither REDIS_SENTINELS nor a Redis URL is given")
    return aioredis.Redis.from_url(url, **options)


def describe(settings: Settings, url: str | None) -> str:
    """Where Redis is, for status lines: never a password."""
    if settings.redis_sentinels:
        return f"sentinel://{settings.redis_sentinels}/{settings.redis_sentinel_master}"
    return url or "unset"
