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

With many inboxes that each send now and then, a `ttl` of seconds makes most deliveries a look-up. So the
directory also listens (`listen()`): PostgreSQL tells every web process of each change to an inbox or to a
tenant's standing in the transaction that makes it (migration 0022: `pg_notify('intake_inboxes', ...)` from
triggers on `inboxes` and `tenants`), and the entry goes at once. While the listener is known to be alive,
entries live `listened_ttl` seconds instead of `ttl`. It is known alive only as far as its last proof: every
`ttl / 2` seconds it notifies the channel itself and hears that back, after every notification committed
before it, and entries loaded under the long lifetime are trusted for `ttl` seconds past the last proof. So
a rotated or revoked secret, a disabled inbox or tenant, or a deleted inbox passes for at most `ttl` seconds
even when the listener's connection dies silently, or listens through a pooler that never delivers; with it
alive, for as long as the notification takes (milliseconds). A listener that fails or reconnects empties the
cache. A look-up that was under way when a notification came is answered but not remembered: it may have read
the row as it was.
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

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from db.tenancy import TenantId
from pipelines.crypto import SecretBox
from pipelines.errors import RetryableError

log = structlog.get_logger("intake.ingress")

CHANNEL = "intake_inboxes"  # a payload is an inbox id, or `tenant:<id>` for a change to a tenant's standing
PROOF = "proof:"  # a listener's own notification, heard back to prove its session alive and listening
RECONNECT_SECONDS = 1.0


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
                 max_entries: int = 10_000, listened_ttl: float = 0.0) -> None:
        self._pool = pool
        self._box = box
        self._ttl = ttl
        self._listened_ttl = listened_ttl
        self._listens = ttl > 0 and listened_ttl > ttl
        self._max_entries = max_entries
        # Keyed by the id's integer: looked up twice a delivery, and a UUID's hash is Python code. Each entry:
        # (expires, whether it needs the listener's proof to be trusted, the inbox or None).
        self._cache: OrderedDict[int, tuple[float, bool, Inbox | None]] = OrderedDict()
        self._loading: dict[int, asyncio.Future[Inbox | None]] = {}  # the queries running now, by id
        self._trusted_until = 0.0  # the listener's last proof + ttl: entries on its word are fresh until then
        self._changes = 0  # notifications heard: a look-up that saw one come is not remembered
        self._proof = ""  # the listener's last proof, and whether it was heard back
        self._proven = False
        self.listening = asyncio.Event()  # set while LISTEN is in effect (tests wait on it)

    def __len__(self) -> int:
        return len(self._cache)

    def known(self, inbox_id: str) -> bool:
        """True when this id named a real inbox at its last look-up (even one whose entry has expired):
        a caller that cannot know more may still trust that the id was not made up."""
        parsed = _parse(inbox_id)
        cached = self._cache.get(parsed.int) if parsed is not None else None
        return cached is not None and cached[2] is not None

    async def get(self, inbox_id: str) -> Inbox | None:
        """The inbox the URL names (its id as written there), or None for an id no inbox has."""
        parsed = _parse(inbox_id)
        if parsed is None:
            return None
        key = parsed.int
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now and (not cached[1] or self._trusted_until > now):
            self._cache.move_to_end(key)
            return cached[2]
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._remember(parsed))
            loading.add_done_callback(_retrieved)
        # Shielded: a waiter that goes away (its client hung up) does not cancel the others' answer.
        return await asyncio.shield(loading)

    async def _remember(self, inbox_id: uuid.UUID) -> Inbox | None:
        key = inbox_id.int
        changes = self._changes
        try:
            inbox = await self._load(inbox_id)
        finally:
            del self._loading[key]
        if self._changes != changes:
            return inbox  # a change was told meanwhile: this answer may predate it
        now = time.monotonic()
        listened = self._listens and self._trusted_until > now
        self._cache[key] = (now + (self._listened_ttl if listened else self._ttl), listened, inbox)
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


    def forget(self, payload: str) -> None:
        """Drop what a notification names: an inbox's entry, or every entry of a tenant (`tenant:<id>`)."""
        self._changes += 1
        if payload.startswith("tenant:"):
            tenant = payload.removeprefix("tenant:")
            for key in [k for k, (_, _, inbox) in self._cache.items() if inbox and str(inbox.tenant_id) == tenant]:
                del self._cache[key]
            return
        parsed = _parse(payload)
        if parsed is None:
            self.forget_all()
        else:
            self._cache.pop(parsed.int, None)

    def forget_all(self) -> None:
        self._changes += 1
        self._cache.clear()

    async def listen(self, dsn: str) -> None:
        """Keep a LISTEN session on the inboxes' changes, and drop each entry a change names, until cancelled.

        The session proves itself every `ttl / 2` seconds by notifying its own channel and hearing it back
        (notifications arrive in commit order, so every change committed before the proof has been heard
        too); entries loaded on its word are trusted for `ttl` seconds past the last proof. A proof is heard
        or the session is lost: one that answers statements but hears nothing (LISTEN through a pooler in
        transaction mode: set INTAKE_LISTEN_DATABASE_URL) never earns trust. A lost session empties the cache,
        which then keeps `ttl`-second entries until a new session has proved itself. Does nothing when
        `listened_ttl` is not above `ttl`, or when `ttl` is 0 (no cache: every delivery reads its inbox, as
        tests that change inboxes between deliveries want, with no notification to wait for)."""
        if not self._listens:
            return
        interval = max(self._ttl / 2, 0.05)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        dsn, autocommit=True, application_name="intake-web-listen", connect_timeout=5) as conn:
                    # Called for every notification, those that arrive with a statement's answer too.
                    conn.add_notify_handler(lambda notice: self._heard(notice.payload))
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.forget_all()  # whatever changed while no one listened
                    while True:
                        await self._prove(conn, interval)
                        self.listening.set()
                        async for _ in conn.notifies(timeout=interval):
                            pass  # the handler has forgotten what each names
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database restarting, the session killed: forget, listen again
                log.warning("ingress.inboxes.listener_lost", error=type(exc).__name__)
            finally:
                self.listening.clear()
                self._trusted_until = 0.0
                self.forget_all()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _prove(self, conn: psycopg.AsyncConnection[Any], interval: float) -> None:
        """Notify the channel and hear it back within `interval`; then trust the entries `ttl` past the send."""
        self._proof = f"{PROOF}{uuid.uuid4()}"
        self._proven = False
        sent = time.monotonic()
        await asyncio.wait_for(conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._proof)), timeout=interval)
        if not self._proven:
            async for _ in conn.notifies(timeout=interval):
                if self._proven:
                    break
        if not self._proven:
            raise ListenerDeaf(f"no notification heard back within {interval} s")
        self._trusted_until = sent + self._ttl

    def _heard(self, payload: str) -> None:
        if payload.startswith(PROOF):  # a proof: ours, or another web process's (nothing to forget)
            self._proven = self._proven or payload == self._proof
            return
        self.forget(payload)


class ListenerDeaf(RetryableError):
    """The listener's session answers but does not hear its own notifications (through a pooler in transaction
    mode, say): the listener connects again, and meanwhile entries live `ttl` seconds."""


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
