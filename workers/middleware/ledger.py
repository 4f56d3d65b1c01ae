"""The failure ledger: every terminal job failure, kept durably in `job_failures`.

dramatiq's own dead letters (`<queue>.XQ`) expire after 7 days, hold the last *enqueued* copy of a message
rather than the final error, and vanish when a queue is flushed. This middleware runs after `Retries` has
decided a message's fate and records the final attempt: the original message (enough to enqueue it again),
the exception and its traceback, the tenant and the ids the job was about.

A job that succeeds but sets one item aside (an ingest event the database refuses) records that item with
`record_in`, in the job's own transaction, under a message that retries only that item; the same columns and the
same upsert as the middleware's rows, so `intake dlq` lists and replays both alike.
"""

from __future__ import annotations

import contextlib
import traceback
import uuid
from typing import Any

import dramatiq
import orjson
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from sqlalchemy import Connection, Executable, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from db import direct
from db.schema import job_failures, tenants
from db.tenancy import TenantId, bind_tenant
from pipelines.errors import escaped, is_retryable, scrub, underlying
from pipelines.ingest import IngestResult
from workers.queues import INGEST_ACTOR, INGEST_QUEUE

log = structlog.get_logger("intake.ledger")
Job = dramatiq.Message[Any] | MessageProxy

# Options that belong to one delivery attempt, not to the job: dropped so a replay starts fresh.
ATTEMPT_OPTIONS = ("retries", "traceback", "eta", "redis_message_id", "requeue_timestamp")
# Row-level security lets the fleet insert a row without a tenant but never see it again, and ON CONFLICT
# needs to see the conflicting row: such a row is a plain INSERT, whose unique violation means "recorded".
_REPEATED = ("message", "exception_type", "exception_message", "traceback")


def _record(row: dict[str, Any], *, upsert: bool = True) -> Executable:
    """The INSERT of one ledger row; with `upsert`, a second failure of the same message updates its row."""
    # inline(): no RETURNING of the generated id, which row-level security would refuse for an untenanted row.
    statement = insert(job_failures).values(row).inline()
    if not upsert:
        return statement
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[job_failures.c.message_id],
        set_={**{column: excluded[column] for column in _REPEATED},
              "attempts": job_failures.c.attempts + excluded.attempts, "last_failed_at": func.now(),
              "status": "dead"})


def tenant_of(message: Job) -> uuid.UUID | None:
    """By convention an actor's first argument (or `tenant_id` keyword) names the tenant."""
    raw = (message.kwargs or {}).get("tenant_id") or (message.args[0] if message.args else None)
    try:
        return uuid.UUID(str(raw)) if raw else None
    except ValueError:
        return None


def job_refs(message: Job) -> str | None:
    ids = [str(a) for a in message.args[1:]] + [f"{k}={v}" for k, v in (message.kwargs or {}).items()
                                                if k != "tenant_id"]
    return scrub(", ".join(ids))[:2000] or None


def replayable(message: Job) -> dict[str, Any]:
    data: dict[str, Any] = message.asdict()
    data["queue_name"] = q_name(data["queue_name"])
    data["options"] = {k: v for k, v in data["options"].items() if k not in ATTEMPT_OPTIONS}
    data["redis_message_id"] = message.options.get("redis_message_id")
    return data


class FailureLedger(dramatiq.Middleware):
    def __init__(self, engine_factory: Any) -> None:
        self._engine = engine_factory

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if exception is not None and message.failed:
            self.record(message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.failed:
            # AgeLimit skips a message too old to run: that is terminal as well.
            self.record(message, TimeoutError("message exceeded its age limit before it ran"))

    def record(self, message: MessageProxy, exception: BaseException) -> None:
        tenant = tenant_of(message)
        row = failure_row(message, exception, tenant, int(message.options.get("retries", 0)) or 1)
        try:
            with self._engine().begin() as conn:
                if tenant is not None:
                    bind_tenant(conn, TenantId(tenant))
                    if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant)).first() is None:
                        row["tenant_id"] = None
                if row["tenant_id"] is not None:
                    conn.execute(_record(row))
                else:
                    with contextlib.suppress(IntegrityError), direct.savepoint(conn):
                        conn.execute(_record(row, upsert=False))
        except Exception as exc:  # the ledger must never take a worker down; dramatiq's XQ still has it
            log.error("ledger.record.failed", job_id=message.message_id, error=repr(exc))
        else:
            log.warning("job.dead", job_id=message.message_id, actor=message.actor_name,
                        error_type=row["exception_type"], error=row["exception_message"])


def failure_row(message: Job, exception: BaseException, tenant: uuid.UUID | None, attempts: int) -> dict[str, Any]:
    """The ledger's columns for a failed message: credentials scrubbed, text storable by PostgreSQL."""
    return {
        "tenant_id": tenant, "queue": q_name(message.queue_name), "actor": message.actor_name,
        "message_id": message.message_id, "message": orjson.loads(orjson.dumps(replayable(message), default=str)),
        "ref_id": job_refs(message), "exception_type": type(underlying(exception)).__name__,
        "exception_message": escaped(scrub(str(exception)))[:4000],
        "traceback": escaped(scrub("".join(traceback.format_exception(exception))))[-20_000:],
        "attempts": attempts,
    }


def record_in(conn: Connection, message: dramatiq.Message[Any], exception: BaseException,
              tenant: uuid.UUID) -> None:
    """Record one failure inside the caller's transaction, with the tenant bound.

    A job that sets one item aside and still succeeds records it here, in the transaction that marks the
    item, with a `message` that retries just that item. The message id is the row's key: the same item
    failing again updates its row (attempts + 1, dead again), as a replay that fails again does. Like the
    middleware, the ledger never fails the job for its own sake: a row it cannot write is logged, and the
    item stays marked; only a retryable error propagates (the whole job then retries).
    """
    try:
        with direct.savepoint(conn):
            conn.execute(_record(failure_row(message, exception, tenant, 1)))
    except DBAPIError as exc:
        if is_retryable(exc):
            raise
        log.error("ledger.record.failed", job_id=message.message_id, error=repr(exc))
    else:
        log.warning("job.dead", job_id=message.message_id, actor=message.actor_name,
                    error_type=type(underlying(exception)).__name__)


def resolve_in(conn: Connection, message_ids: list[str]) -> None:
    """Dead failures whose message has now run successfully (retried by other means than a replay)."""
    conn.execute(update(job_failures)
                 .where(job_failures.c.message_id.in_(message_ids), job_failures.c.status == "dead")
                 .values(status="resolved"))


def settle_batch(conn: Connection, result: IngestResult, retry_failed: bool, *, tenant: TenantId) -> None:
    """The ledger's part of an ingest batch, in its transaction: each event it set aside recorded (replayable
    alone), and with `retry_failed` the failures of the events it stored resolved. The ingest actor and an
    erasure's backlog (`workers.ops.erasure`) both settle their batches here."""
    for event_id, error in result.failed.items():
        record_in(conn, retry_message(str(tenant), event_id), error, tenant)
    if retry_failed and result.processed:
        resolve_in(conn, [retry_message(str(tenant), e).message_id for e in result.processed])


def retry_message(tenant_id: str, event_id: uuid.UUID) -> dramatiq.Message[Any]:
    """The job that runs one set-aside event again; its id is the event's, so its ledger row is one."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=INGEST_QUEUE, actor_name=INGEST_ACTOR, args=(tenant_id, [str(event_id)]),
        kwargs={"retry_failed": True}, options={})  # by name: the ledger and an erasure need no actor
    return message.copy(message_id=str(uuid.uuid5(event_id, INGEST_ACTOR)))
