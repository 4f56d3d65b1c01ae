"""Operator tools over the failure ledger: list, show, replay, discard, stats.

They run as the schema owner (INTAKE_ADMIN_DATABASE_URL), whose `intake_maintenance` membership lets it
read the ledger across tenants. Replay re-enqueues the original message with fresh retry counts and a fresh
timestamp (so AgeLimit does not drop it at once), removes dramatiq's `.XQ` copy, and marks the row replayed.
Rows are claimed with FOR UPDATE SKIP LOCKED, so two operators replaying at once replay each failure once;
only failures recorded before the run started are taken, so a message that fails again is not looped on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import dramatiq
import structlog
from sqlalchemy import ColumnElement, Connection, and_, func, or_, select, true, update

from db.schema import job_failures

log = structlog.get_logger("intake.ledger")
STATUSES = ("dead", "replayed", "discarded", "resolved")


@dataclass(frozen=True)
class Filters:
    ids: tuple[uuid.UUID, ...] = ()
    queue: str | None = None
    actor: str | None = None
    tenant: uuid.UUID | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None

    def where(self) -> ColumnElement[bool]:
        c = job_failures.c
        clauses: list[ColumnElement[bool]] = []
        if self.ids:
            clauses.append(c.id.in_(self.ids))
        for column, value in ((c.queue, self.queue), (c.actor, self.actor), (c.tenant_id, self.tenant),
                              (c.status, self.status)):
            if value is not None:
                clauses.append(column == value)
        if self.error:
            pattern = f"%{escape_like(self.error)}%"
            clauses.append(or_(c.exception_type.ilike(pattern, escape="\\"),
                               c.exception_message.ilike(pattern, escape="\\")))
        if self.since:
            clauses.append(c.last_failed_at >= self.since)
        if self.until:
            clauses.append(c.last_failed_at < self.until)
        return and_(true(), *clauses)


def escape_like(value: str) -> str:
    """`value` matched literally inside a LIKE pattern: its % and _ are not wildcards."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


LISTED = ("id", "tenant_id", "queue", "actor", "message_id", "ref_id", "exception_type", "exception_message",
          "attempts", "status", "first_failed_at", "last_failed_at", "replayed_at")


def list_failures(conn: Connection, filters: Filters, limit: int = 100) -> list[dict[str, Any]]:
    c = job_failures.c
    query = (select(*(c[name] for name in LISTED)).where(filters.where())
             .order_by(c.last_failed_at.desc(), c.id).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


def counts_by_error(conn: Connection, filters: Filters) -> list[dict[str, Any]]:
    c = job_failures.c
    number = func.count().label("count")
    query = (select(c.exception_type, c.status, number).where(filters.where())
             .group_by(c.exception_type, c.status).order_by(number.desc(), c.exception_type))
    return [dict(r) for r in conn.execute(query).mappings()]


def show(conn: Connection, failure_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(select(job_failures).where(job_failures.c.id == failure_id)).mappings().first()
    return dict(row) if row else None


def stats(conn: Connection) -> dict[str, Any]:
    c = job_failures.c
    by_status: dict[str, int] = {status: n for status, n in conn.execute(
        select(c.status, func.count()).group_by(c.status))}
    dead = func.count().label("dead")
    by_queue = [dict(r) for r in conn.execute(
        select(c.queue, c.actor, dead, func.max(c.last_failed_at).label("last_failed_at"))
        .where(c.status == "dead").group_by(c.queue, c.actor).order_by(dead.desc())).mappings()]
    return {"by_status": {s: by_status.get(s, 0) for s in STATUSES}, "dead_by_actor": by_queue}


def count(conn: Connection, filters: Filters) -> int:
    query = select(func.count()).select_from(job_failures).where(filters.where())
    return int(conn.execute(query).scalar_one())


def discard(conn: Connection, filters: Filters) -> int:
    result = conn.execute(update(job_failures).where(job_failures.c.status == "dead", filters.where())
                          .values(status="discarded"))
    return int(result.rowcount)


def fresh_message(stored: dict[str, Any]) -> dramatiq.Message[Any]:
    """The stored message, ready to run again: same id, no attempt history, a new timestamp."""
    return dramatiq.Message(
        queue_name=stored["queue_name"], actor_name=stored["actor_name"], args=tuple(stored.get("args") or ()),
        kwargs=dict(stored.get("kwargs") or {}), options=dict(stored.get("options") or {}),
        message_id=stored["message_id"], message_timestamp=int(time.time() * 1000),
    )


class Transactions(Protocol):
    """What `replay` needs of an engine: transactions (an admin call passes one bound to its tenant)."""

    def begin(self) -> AbstractContextManager[Connection]: ...


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def replay(
    engine: Transactions, broker: Any, filters: Filters, *, batch: int = 500, rate: float | None = None,
    on_progress: Callable[[int], None] | None = None, wait: Callable[[float], bool] = _sleep,
) -> Iterator[uuid.UUID]:
    """Replay matching dead failures in bounded batches; yields each replayed failure's id.

    Paced (`rate` a second), a batch holds at most a second's worth, and the pause that follows it is taken
    after its transaction has committed: a slow replay never holds row locks, a claim or an open transaction
    while it waits. `wait(seconds)` pauses (an admin job passes its cancel event's `wait`); True stops the
    replay there.

    A row whose stored message cannot be rebuilt (written by hand, or by an older version) is left dead,
    logged, and not claimed again by this run.
    """
    started = datetime.now().astimezone()
    c = job_failures.c
    client = broker.client
    if rate:
        batch = max(1, min(batch, int(rate)))
    skipped: list[uuid.UUID] = []
    while True:
        claim = (select(c.id, c.queue, c.message)
                 .where(c.status == "dead", c.last_failed_at < started, c.id.notin_(skipped), filters.where())
                 .order_by(c.last_failed_at, c.id).limit(batch).with_for_update(skip_locked=True))
        with engine.begin() as conn:
            rows = conn.execute(claim).all()
            if not rows:
                return
            replayed = []
            for row in rows:
                stored = row.message if isinstance(row.message, dict) else {}
                try:
                    message = fresh_message(stored)
                except (KeyError, TypeError, ValueError):
                    log.warning("ledger.replay.unreplayable", failure_id=str(row.id))
                    skipped.append(row.id)
                    continue
                broker.enqueue(message)
                replayed.append(row.id)
                dead_id = stored.get("redis_message_id")
                if dead_id:
                    pipe = client.pipeline()
                    pipe.zrem(f"{broker.namespace}:{row.queue}.XQ", dead_id)
                    pipe.hdel(f"{broker.namespace}:{row.queue}.XQ.msgs", dead_id)
                    pipe.execute()
            if replayed:
                conn.execute(update(job_failures).where(c.id.in_(replayed))
                             .values(status="replayed", replayed_at=func.now()))
        yield from replayed
        if on_progress is not None and replayed:
            on_progress(len(replayed))
        if rate and replayed and wait(len(replayed) / rate):
            return
