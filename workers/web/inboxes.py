"""Inbox routing for the ingress: the inbox id in the URL names the tenant, the channel and the secrets.

Lookups are cached for a short time (negative answers too, so random ids cannot hammer the database);
disabling an inbox or rotating its secrets takes effect within `ttl` seconds.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from db.tenancy import TenantId
from pipelines.crypto import SecretBox


@dataclass(frozen=True)
class Inbox:
    id: uuid.UUID
    tenant_id: TenantId
    channel: str
    secrets: dict[str, str]
    settings: dict[str, Any]
    enabled: bool


class InboxDirectory:
    def __init__(self, pool: AsyncConnectionPool, box: SecretBox, ttl: float = 10.0) -> None:
        self._pool = pool
        self._box = box
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Inbox | None]] = {}

    async def get(self, inbox_id: str) -> Inbox | None:
        """The inbox the URL names (its id as written there), or None for an id no inbox has."""
        now = time.monotonic()
        cached = self._cache.get(inbox_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            key = uuid.UUID(inbox_id)
        except ValueError:
            inbox = None
        else:
            inbox = await self._load(key)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[inbox_id] = (now + self._ttl, inbox)
        return inbox

    async def _load(self, inbox_id: uuid.UUID) -> Inbox | None:
        async with self._pool.connection() as conn, conn.transaction():
            # The routing policy reveals exactly the inbox named here, and nothing of any tenant.
            await conn.execute("SELECT set_config('app.inbox_id', %s, true)", (str(inbox_id),))
            cursor = await conn.execute(
                "SELECT tenant_id, channel, secrets, settings, enabled FROM inboxes WHERE id = %s", (inbox_id,)
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        tenant_id, channel, sealed, settings, enabled = row
        return Inbox(inbox_id, TenantId(tenant_id), channel, self._box.open(sealed), settings or {}, enabled)
