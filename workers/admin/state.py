"""The admin process's state, shared by every request of the API and the console: engines, Redis, the tools
that hold its secrets, the background jobs, each key's request bucket, the storage figures' cache and the one
LISTEN connection of the change streams.

Kept apart from `app.py`, which wires the routes together: the pieces (the API's plumbing, the console) are
typed against this module, never against the one that imports them.
"""

from __future__ import annotations

from sqlalchemy import Engine

from config import Settings
from db.engine import make_engine
from pipelines.control.inboxes import Inboxes
from pipelines.control.keys import Principal, authenticate
from pipelines.crypto import SecretBox
from pipelines.webhooks.endpoints import Endpoints
from workers import redis_clients
from workers.admin.background import Jobs
from workers.admin.cache import TenantCache
from workers.admin.feed import ChangeListener
from workers.ratelimit import TokenBuckets


class Admin:
    """What the admin process shares between requests: its two engines, Redis (where jobs that name a tenant's
    records wait), the inbox and webhook endpoint tools, the jobs, each key's request bucket, the tenants'
    storage figures, and the one LISTEN connection of every change stream."""

    def __init__(self, settings: Settings, *, database_url: str, admin_database_url: str, secret_key: str) -> None:
        self.settings = settings
        prepared = settings.db_prepared_statements
        self.app_engine: Engine = make_engine(database_url, prepared_statements=prepared, pool_size=4,
                                              application_name="intake-admin")
        self.owner_engine: Engine = make_engine(admin_database_url, prepared_statements=prepared, pool_size=4,
                                                application_name="intake-admin-owner")
        base = settings.public_base_url or "http://127.0.0.1:8000"
        self.inboxes = Inboxes(SecretBox(secret_key), base)
        self.webhooks = Endpoints(SecretBox(secret_key), allow_private=settings.webhook_allow_private_networks)
        self.jobs = Jobs()
        self.key_buckets = TokenBuckets()  # requests per API key (read and charged on the event loop only)
        self.stats_cache = TenantCache(settings.admin_stats_cache_seconds)
        self.redis = (redis_clients.client(settings, settings.redis_url, socket_connect_timeout=5)
                      if settings.redis_configured else None)
        # LISTEN needs a session of its own: INTAKE_LISTEN_DATABASE_URL where DATABASE_URL goes through PgBouncer.
        self.feed = ChangeListener(settings.listen_database_url or database_url)

    def authenticate(self, key: str | None) -> Principal | None:
        """Keys are looked up as the maintenance role: before a key is known there is no tenant to bind."""
        if key is None:
            return None
        with self.owner_engine.begin() as conn:
            return authenticate(conn, key)

    def close(self) -> None:
        self.feed.close()
        self.jobs.shutdown()
        self.app_engine.dispose()
        self.owner_engine.dispose()
        if self.redis is not None:
            self.redis.close()
