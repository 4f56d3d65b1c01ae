"""Inbox routing for the ingress: the inbox id in the URL names the tenant, the channel and the secrets.

Lookups are cached for a short time, negative answers too, so a repeated unknown id costs one query per
`ttl`; disabling an inbox or rotating its secrets takes effect within `ttl` seconds. The cache is an LRU of
at most `max_entries` ids: a stranger cycling through random ids evicts the least recently used entries
instead of growing memory or emptying the cache wholesale. A path segment that is not a UUID never reaches
the database and is never cached (random strings cost nothing to remember). Entries that expired stay in
the LRU until evicted, so `known` can tell an id that was recently a real inbox from one never seen. One
query per id at a time: requests that find an id's entry missing or expired while its query runs wait for
that query's answer instead of sending their own (a busy inbox's entry expiring under hundreds of requests in
flight would otherwise cost hundreds of queries).

An inbox whose tenant is disabled is loaded as not enabled. After a rotation of its secrets an inbox carries
the previous ones too, with the end of the overlap, which is compared with each delivery's time: the cache
never stretches the overlap, though a new rotation or a changed expiry is seen only after `ttl`.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
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
    # The secrets a rotation replaced, verifying too until `previous_until` (the overlap window).
    previous_secrets: dict[str, str] | None = None
    previous_until: datetime | None = None

    @functools.cached_property
    def rate_limit(self) -> tuple[float | None, int | None]:
        """The inbox's own `rate_limit_per_second` and `rate_limit_burst`, None where the defaults apply:
        read once per loaded inbox rather than once per delivery."""
        rate = float(self.settings["rate_limit_per_second"]) if "rate_limit_per_second" in self.settings else None
        burst = int(self.settings["rate_limit_burst"]) if "rate_limit_burst" in self.settings else None
        return rate, burst

    def secret_sets(self, now: datetime) -> list[dict[str, str]]:
        """The secrets a delivery received at `now` may be signed with: the current ones, then during a
        rotation's overlap the previous ones."""
        if self.previous_secrets is not None and self.previous_until is not None and now < self.previous_until:
            return [self.secrets, self.previous_secrets]
        return [self.secrets]


class InboxDirectory:
    def __init__(self, pool: AsyncConnectionPool, box: SecretBox, ttl: float = 10.0,
                 max_entries: int = 10_000) -> None:
        self._pool = pool
        self._box = box
        self._ttl = ttl
        self._max_entries = max_entries
        # Keyed by the id's integer: looked up twice a delivery, and a UUID's hash is Python code.
        self._cache: OrderedDict[int, tuple[float, Inbox | None]] = OrderedDict()
        self._loading: dict[int, asyncio.Future[Inbox | None]] = {}  # the queries running now, by id

    def __len__(self) -> int:
        return len(self._cache)

    def known(self, inbox_id: str) -> bool:
        """True when this id named a real inbox at its last look-up (even one whose entry has expired):
        a caller that cannot know more may still trust that the id was not made up."""
        parsed = _parse(inbox_id)
        cached = self._cache.get(parsed.int) if parsed is not None else None
        return cached is not None and cached[1] is not None

    async def get(self, inbox_id: str) -> Inbox | None:
        """The inbox the URL names (its id as written there), or None for an id no inbox has."""
        parsed = _parse(inbox_id)
        if parsed is None:
            return None
        key = parsed.int
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return cached[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._remember(parsed))
            loading.add_done_callback(_retrieved)
        # Shielded: a waiter that goes away (its client hung up) does not cancel the others' answer.
        return await asyncio.shield(loading)

    async def _remember(self, inbox_id: uuid.UUID) -> Inbox | None:
        key = inbox_id.int
        try:
            inbox = await self._load(inbox_id)
        finally:
            del self._loading[key]
        self._cache[key] = (time.monotonic() + self._ttl, inbox)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return inbox

    async def _load(self, inbox_id: uuid.UUID) -> Inbox | None:
        # One statement in a transaction of its own: `intake_route_inbox` names the inbox, which the routing
        # policy reveals alone, reads it, then binds its tenant like any tenant's transaction and reads whether
        # the tenant is disabled (migration 0014); both settings end with the transaction. A disabled tenant's
        # inboxes refuse all. (The ingress's connections autocommit, where the commit sends nothing.)
        async with self._pool.connection() as conn:
            cursor = await conn.execute("SELECT * FROM intake_route_inbox(%s)", (inbox_id,))
            row = await cursor.fetchone()
            await conn.commit()
        if row is None:
            return None
        tenant_id, channel, sealed, settings, enabled, previous, until, tenant_active = row
        return Inbox(inbox_id, TenantId(tenant_id), channel, self._box.open(sealed), settings or {},
                     enabled and tenant_active, self._box.open(previous) if previous and until else None, until)


def _retrieved(done: asyncio.Future[Inbox | None]) -> None:
    """Take a failed query's error off its future: the waiters were given it, or have all gone away."""
    if not done.cancelled():
        done.exception()


# Every delivery looks its inbox id up twice (`known`, then `get`): parse it once. The cache is bounded, and
# an id that junk evicted costs only a parse again.
@lru_cache(maxsize=16_384)
def _parse(inbox_id: str) -> uuid.UUID | None:
    """The id as a UUID, or None for anything else; only the canonical 36-character form is an id (no
    braces, no `urn:uuid:` prefix), so one inbox has one spelling."""
    if len(inbox_id) != 36:
        return None
    try:
        return uuid.UUID(inbox_id)
    except ValueError:
        return None
