"""Group commit for the ingress: many concurrent deliveries share one transaction and one enqueue.

A request hands its event row to `EventWriter.submit` and waits. Writer tasks take whatever rows are
waiting (up to a batch limit), insert them in one statement with ON CONFLICT DO NOTHING on the
(tenant, inbox, dedupe key) idempotency key, commit, and wake the requests: only then may they
acknowledge. New events then go to the `ingest` queue off the request path, through an `Outbox` that
sends at most one job per tenant per window. If Redis is down the events stay `received`, and the sweeper
enqueues them later.

A delivery the database refuses must not take its batch down with it. When the statement fails for a
reason that is not the database's availability (a NUL in a dedupe key, a value too large to index), the
batch is split in halves and each half retried, recursively: the good rows commit, and the culprit alone
is refused as `UnstorableEvent` (about 2 log2(n) statements for one bad row in n, paid only then). When the
database is unavailable (connection lost, pool timeout, deadlock, cancelled) the whole batch fails with the
original error, and nobody is acknowledged. Any other error of a row alone is a bug, passed on as it is.

A row may carry a one-time token (Mailgun's): the statement claims it in the same transaction, also when
the event is a duplicate, so a token is accepted once by the whole fleet; `submit` says `REPLAYED` when
another delivery holds it. Rows with a token are never merged with one another: each claims its own.

The queue in front of the writers is bounded: when it is full, `submit` raises `WriterBusy` at once, and the
ingress answers 503 with Retry-After instead of holding more bodies in memory while the database is slow.

    pipelines.errors.IntakeError
     +-- RetryableError  +-- WriterBusy          the queue is full: retry later (503)
     +-- PermanentError  +-- UnstorableEvent     the database refuses this row: the delivery is at fault (400)

psycopg is used directly here, not through SQLAlchemy: this is the hottest path in the fleet.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import math
import uuid
from base64 import b64encode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from pipelines.errors import PermanentError, RetryableError, is_retryable

log = structlog.get_logger("intake.ingress")

# The whole batch is one statement: `intake_store_events` (migrations 0006, 0009) claims each tenant's
# one-time tokens and inserts its rows under that tenant, ON CONFLICT DO NOTHING, and returns the events it
# created and the places in the batch of the rows whose token another delivery already holds. On an
# autocommit connection the statement is its own transaction: one round trip, committed when it returns.
STORE_EVENTS = "SELECT * FROM intake_store_events(%s::json)"

# SQLSTATE classes that blame the row, with what the sender is told: never the database's own message,
# which may quote values (another tenant's, in a unique violation).
INPUT_FAULTS = {
    "22": "it contains a value the database cannot store (a NUL character, invalid Unicode or a malformed value)",
    "23": "it breaks a constraint of the event store",
    "54": "a value in it is too large to store or index",
}

# Jobs sent to Redis in one command at most: a command stays small while Redis is slow and jobs pile up.
SEND_MAX_JOBS = 500

# A delivery this large (an email with attachments: up to 25 MiB) is committed in a batch of its own: its
# insert takes far longer than a batch of chat messages, and they should not wait for it.
ALONE_BYTES = 1_048_576

Job = tuple[uuid.UUID, list[uuid.UUID]]  # (tenant id, its new event ids)
Enqueue = Callable[[list[Job]], Awaitable[None]]  # sends jobs to the ingest queue, all in one command
Key = tuple[int, str]  # (inbox id as an integer, dedupe key): inbox ids are unique across tenants
Created = dict[Key, tuple[uuid.UUID, uuid.UUID]]  # the new events: (tenant id, event id) by key
Placed = tuple[int, "EventRow"]  # a row and its place in the batch (the order the deliveries came in)


class Outcome(enum.Enum):
    STORED = "stored"  # a new event
    DUPLICATE = "duplicate"  # the provider repeated a delivery already stored
    REPLAYED = "replayed"  # its one-time token is already held by another delivery: not stored


class WriterBusy(RetryableError):
    """Too many deliveries are waiting for a commit; nothing was stored."""


class UnstorableEvent(PermanentError):
    """The database refuses this delivery's row; the delivery itself is at fault."""


def input_fault(exc: BaseException) -> str | None:
    """Why the sender's row cannot be stored, when `exc` blames the row; None when it does not."""
    if isinstance(exc, orjson.JSONEncodeError | UnicodeError):
        return "it contains text that is not valid Unicode (a lone surrogate)"
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        return INPUT_FAULTS.get(exc.sqlstate[:2])
    return None


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
    replay_token: str | None = None  # a one-time token the sender must not use again (Mailgun's)
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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
                 queue_max: int = 1024, enqueue_window: float = 0.0, job_max_ids: int = 500,
                 on_enqueue_error: Callable[[BaseException, int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._pool = pool
        self._enqueue = enqueue
        self._batch_max = batch_max
        self._writers = writers
        self._queue: asyncio.Queue[EventRow] = asyncio.Queue(maxsize=queue_max)
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox = Outbox(self._start_send, window=enqueue_window, max_ids=job_max_ids)
        self._to_send: list[Job] = []
        self._sender: asyncio.Task[None] | None = None
        self._on_enqueue_error = on_enqueue_error
        self._on_batch = on_batch

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"event-writer-{i}") for i in range(self._writers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._outbox.flush_all()
        if self._sender is not None:
            await asyncio.wait([self._sender], timeout=5)

    async def submit(self, row: EventRow) -> Outcome:
        """Store the event durably and say how it went.

        Raises `WriterBusy` at once when the queue is full, `UnstorableEvent` when the database refuses this
        row, and the database's own error when it is unavailable: in every case nothing was stored.
        """
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            raise WriterBusy("too many deliveries are waiting to be stored") from None
        return await row.done

    async def _run(self) -> None:
        carried: EventRow | None = None  # a large row met while filling a batch: the next batch, alone
        while True:
            first = carried if carried is not None else await self._queue.get()
            carried = None
            batch = [first]
            while len(first.body) < ALONE_BYTES and len(batch) < self._batch_max and not self._queue.empty():
                row = self._queue.get_nowait()
                if len(row.body) >= ALONE_BYTES:
                    carried = row
                    break
                batch.append(row)
            try:
                await self._commit(batch)
            except Exception as exc:  # a bug past the statement: still answer every waiting request
                self._fail(batch, exc)

    async def _commit(self, batch: list[EventRow]) -> None:
        """Write `batch` and settle every row; split it in halves when the statement fails on a row."""
        try:
            created, replayed = await self._write(batch)
        except Exception as exc:
            if len(batch) > 1 and not is_retryable(exc):  # the database is not busy: some row is bad
                log.warning("ingress.batch.split", rows=len(batch), error=type(exc).__name__)
                half = len(batch) // 2
                await self._commit(batch[:half])
                await self._commit(batch[half:])
            else:
                self._fail(batch, exc)
            return
        for row in replayed:
            if not row.done.done():
                row.done.set_result(Outcome.REPLAYED)
        for row in batch:
            if not row.done.done():
                stored = (row.inbox_id.int, row.dedupe_key) in created
                row.done.set_result(Outcome.STORED if stored else Outcome.DUPLICATE)
        by_tenant: dict[int, tuple[uuid.UUID, list[uuid.UUID]]] = {}
        for tenant, event_id in created.values():
            waiting = by_tenant.get(tenant.int)
            if waiting is None:
                by_tenant[tenant.int] = (tenant, [event_id])
            else:
                waiting[1].append(event_id)
        for tenant, ids in by_tenant.values():
            self._outbox.add(tenant, ids)

    def _fail(self, batch: list[EventRow], exc: Exception) -> None:
        fault = input_fault(exc) if len(batch) == 1 else None
        if fault is None:  # the database is unreachable or refused: nothing was acknowledged
            log.error("ingress.batch.failed", rows=len(batch), error=repr(exc))
            settle: Exception = exc
        else:
            (row,) = batch
            log.warning("ingress.event.unstorable", tenant_id=str(row.tenant_id), inbox_id=str(row.inbox_id),
                        channel=row.channel, error=type(exc).__name__,
                        sqlstate=getattr(exc, "sqlstate", None))
            settle = UnstorableEvent(f"the delivery cannot be stored: {fault}")
        for row in batch:
            if not row.done.done():
                row.done.set_exception(settle)

    async def _write(self, batch: list[EventRow]) -> tuple[Created, list[EventRow]]:
        # One global order: concurrent writers then take the unique index's locks in the same order and
        # cannot deadlock on a provider's simultaneous retries. One row per idempotency key, except that a
        # row with a token always goes: its token is claimed, or it is told apart as replayed. Each row
        # keeps its place in the batch: of two rows with one token, the earlier arrival claims it.
        # Keys use the ids' integers: UUID's own hash and comparisons are Python code, called many times a row.
        groups: dict[int, list[Placed]] = {}
        seen: set[tuple[int, int, str]] = set()
        for place, row in sorted(enumerate(batch), key=_order):
            key = (row.tenant_id.int, row.inbox_id.int, row.dedupe_key)
            if row.replay_token is None:
                if key in seen:
                    continue
                seen.add(key)
            group = groups.get(key[0])
            if group is None:
                groups[key[0]] = [(place, row)]
            else:
                group.append((place, row))
        for attempt in range(3):
            try:
                return await self._insert(groups, batch)
            except psycopg.errors.DeadlockDetected:  # belt and braces: another writer outside our order
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _insert(self, groups: dict[int, list[Placed]],
                      batch: list[EventRow]) -> tuple[Created, list[EventRow]]:
        payload = [_group(rows[0][1].tenant_id, rows) for rows in groups.values()]
        created: Created = {}
        replayed: list[EventRow] = []
        async with self._pool.connection() as conn:
            cursor = await conn.execute(STORE_EVENTS, (orjson.dumps(payload).decode(),))
            for tenant, event_id, inbox_id, dedupe_key, replayed_item in await cursor.fetchall():
                if replayed_item is not None:
                    replayed.append(batch[replayed_item])
                else:
                    created[(inbox_id.int, dedupe_key)] = (tenant, event_id)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        return created, replayed

    def _start_send(self, tenant: uuid.UUID, ids: list[uuid.UUID]) -> None:
        """Queue a job for the sender. An idle sender starts at once (a lone delivery waits for nothing); the
        jobs that come while it is sending leave together in its next command, so with many tenants (a job
        each per window) the web spends one Redis command on many jobs instead of one each."""
        self._to_send.append((tenant, ids))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all())

    async def _send_all(self) -> None:
        while self._to_send:
            jobs, self._to_send = self._to_send[:SEND_MAX_JOBS], self._to_send[SEND_MAX_JOBS:]
            try:
                await self._enqueue(jobs)
            except Exception as exc:
                # Acknowledged and stored: the sweeper will enqueue these events once Redis is back.
                events = sum(len(ids) for _, ids in jobs)
                log.warning("ingress.enqueue.failed", jobs=len(jobs), events=events, error=repr(exc))
                if self._on_enqueue_error is not None:
                    self._on_enqueue_error(exc, events)


def _order(placed: Placed) -> tuple[int, int, str]:
    """The batch's one global order: by tenant, inbox (UUIDs order as their integers) and dedupe key."""
    row = placed[1]
    return row.tenant_id.int, row.inbox_id.int, row.dedupe_key


def _group(tenant: uuid.UUID, rows: list[Placed]) -> dict[str, object]:
    """One tenant's rows as `intake_store_events` reads them. A row with a token names its place in the batch
    (`item`), and the group lists its `tokens` with that place and the digest of the row's bytes: of two rows
    with one token the earlier claims it, and the function names the replayed ones by their place."""
    items: list[dict[str, object]] = []
    tokens: list[dict[str, object]] = []
    for place, r in rows:
        item: dict[str, object] = {
            "inbox_id": r.inbox_id, "channel": r.channel, "dedupe_key": r.dedupe_key,
            "content_type": r.content_type, "headers": r.headers, "body": b64encode(r.body).decode(),
            "received_at": r.received_at}
        if r.replay_token is not None:
            item["item"] = place
            tokens.append({"item": place, "inbox_id": r.inbox_id, "dedupe_key": r.dedupe_key,
                           "token": r.replay_token,
                           # here, several times faster than PostgreSQL's decode and digest of a large body
                           "body_digest": hashlib.sha256(r.body).hexdigest()})
        items.append(item)
    return {"tenant": tenant, "rows": items, "tokens": tokens} if tokens else {"tenant": tenant, "rows": items}
