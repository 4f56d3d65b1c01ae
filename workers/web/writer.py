"""Group commit for the ingress: many concurrent deliveries share one transaction and one enqueue.

A request hands its event row to `EventWriter.submit` and waits. Writer tasks take whatever rows are
waiting (up to a batch limit), insert them in one statement with ON CONFLICT DO NOTHING on the
(tenant, inbox, dedupe key) idempotency key, commit, and wake the requests: only then may they
acknowledge. New events then go to the `ingest` queue off the request path, through an `Outbox` that
sends at most one job per tenant per window. If Redis is down the events stay `received`, and the sweeper
enqueues them later.

psycopg is used directly here, not through SQLAlchemy: this is the hottest path in the fleet.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from base64 import b64encode
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger("intake.ingress")

# The whole batch is one statement: `intake_store_events` (migration 0006) inserts each tenant's rows
# under that tenant, ON CONFLICT DO NOTHING on the idempotency key, and returns the rows it created. On an
# autocommit connection the statement is its own transaction: one round trip, committed when it returns.
STORE_EVENTS = "SELECT * FROM intake_store_events(%s::json)"

Enqueue = Callable[[uuid.UUID, list[uuid.UUID]], Awaitable[None]]


@dataclass
class EventRow:
    tenant_id: uuid.UUID
    inbox_id: uuid.UUID
    channel: str
    dedupe_key: str
    content_type: str
    headers: dict[str, str]
    body: bytes
    received_at: object
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Outbox:
    """Stored event ids on their way to the `ingest` queue: at most one job per tenant per window.

    The first ids after a quiet window leave at once, so a lone delivery is not held back. Under
    sustained traffic a tenant's ids gather for up to `window` seconds and leave as one job (or sooner,
    at `max_ids`): jobs grow with the rate instead of multiplying, and each job costs a transaction.
    """

    def __init__(self, send: Callable[[uuid.UUID, list[uuid.UUID]], None], *, window: float, max_ids: int) -> None:
        self._send = send
        self._window = window
        self._max_ids = max_ids
        self._waiting: dict[uuid.UUID, list[uuid.UUID]] = {}
        self._timers: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._last_sent: dict[uuid.UUID, float] = {}

    def add(self, tenant: uuid.UUID, ids: list[uuid.UUID]) -> None:
        waiting = self._waiting.setdefault(tenant, [])
        waiting.extend(ids)
        if len(waiting) >= self._max_ids:
            self._flush(tenant)
            return
        if tenant in self._timers:
            return
        loop = asyncio.get_running_loop()
        due = self._last_sent.get(tenant, -math.inf) + self._window
        if loop.time() >= due:
            self._flush(tenant)
        else:
            self._timers[tenant] = loop.call_at(due, self._flush, tenant)

    def flush_all(self) -> None:
        for tenant in list(self._waiting):
            self._flush(tenant)

    def _flush(self, tenant: uuid.UUID) -> None:
        timer = self._timers.pop(tenant, None)
        if timer is not None:
            timer.cancel()
        ids = self._waiting.pop(tenant, [])
        now = asyncio.get_running_loop().time()
        self._last_sent[tenant] = now
        if len(self._last_sent) > 10_000:  # forget tenants that have been quiet for a window
            self._last_sent = {t: at for t, at in self._last_sent.items() if now - at < self._window}
        if ids:
            self._send(tenant, ids)


class EventWriter:
    def __init__(self, pool: AsyncConnectionPool, enqueue: Enqueue, *, writers: int, batch_max: int,
                 enqueue_window: float = 0.0, job_max_ids: int = 500,
                 on_enqueue_error: Callable[[BaseException], None] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._pool = pool
        self._enqueue = enqueue
        self._batch_max = batch_max
        self._writers = writers
        self._queue: asyncio.Queue[EventRow] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox = Outbox(self._start_send, window=enqueue_window, max_ids=job_max_ids)
        self._enqueues: set[asyncio.Task[None]] = set()
        self._on_enqueue_error = on_enqueue_error
        self._on_batch = on_batch
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"event-writer-{i}") for i in range(self._writers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._outbox.flush_all()
        if self._enqueues:
            await asyncio.wait(self._enqueues, timeout=5)

    async def submit(self, row: EventRow) -> bool:
        """Store the event durably; True when it is new, False when the provider repeated itself."""
        await self._queue.put(row)
        return await row.done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                created = await self._write(batch)
            except Exception as exc:  # the database is unreachable or refused: nothing was acknowledged
                log.error("ingress.batch.failed", rows=len(batch), error=repr(exc))
                for row in batch:
                    if not row.done.done():
                        row.done.set_exception(exc)
                continue
            for row in batch:
                if not row.done.done():
                    row.done.set_result((row.inbox_id, row.dedupe_key) in created)
            by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
            for (_, _), (tenant, event_id) in created.items():
                by_tenant[tenant].append(event_id)
            for tenant, ids in by_tenant.items():
                self._outbox.add(tenant, ids)

    async def _write(self, batch: list[EventRow]) -> dict[tuple[uuid.UUID, str], tuple[uuid.UUID, uuid.UUID]]:
        # One row per idempotency key, in one global order: concurrent writers then take the unique
        # index's locks in the same order and cannot deadlock on a provider's simultaneous retries.
        unique: dict[tuple[uuid.UUID, uuid.UUID, str], EventRow] = {}
        for row in batch:
            unique.setdefault((row.tenant_id, row.inbox_id, row.dedupe_key), row)
        groups: dict[uuid.UUID, list[EventRow]] = defaultdict(list)
        for key in sorted(unique):
            groups[key[0]].append(unique[key])
        for attempt in range(3):
            try:
                return await self._insert(groups, len(batch))
            except psycopg.errors.DeadlockDetected:  # belt and braces: another writer outside our order
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _insert(self, groups: dict[uuid.UUID, list[EventRow]],
                      size: int) -> dict[tuple[uuid.UUID, str], tuple[uuid.UUID, uuid.UUID]]:
        batch = orjson.dumps([
            {"tenant": tenant, "rows": [
                {"inbox_id": r.inbox_id, "channel": r.channel, "dedupe_key": r.dedupe_key,
                 "content_type": r.content_type, "headers": r.headers, "body": b64encode(r.body).decode(),
                 "received_at": r.received_at}
                for r in rows
            ]}
            for tenant, rows in groups.items()
        ]).decode()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(STORE_EVENTS, (batch,))
            created = {(inbox_id, dedupe_key): (tenant, event_id)
                       for tenant, event_id, inbox_id, dedupe_key in await cursor.fetchall()}
        self.batches += 1
        self.rows += size
        if self._on_batch is not None:
            self._on_batch(size)
        return created

    def _start_send(self, tenant: uuid.UUID, ids: list[uuid.UUID]) -> None:
        task = asyncio.create_task(self._send(tenant, ids))
        self._enqueues.add(task)
        task.add_done_callback(self._enqueues.discard)

    async def _send(self, tenant: uuid.UUID, ids: list[uuid.UUID]) -> None:
        try:
            await self._enqueue(tenant, ids)
        except Exception as exc:
            # Acknowledged and stored: the sweeper will enqueue these events once Redis is back.
            log.warning("ingress.enqueue.failed", tenant_id=str(tenant), events=len(ids), error=repr(exc))
            if self._on_enqueue_error is not None:
                self._on_enqueue_error(exc)
