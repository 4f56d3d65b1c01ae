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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq
from sqlalchemy import Connection, Engine, text

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

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.ids:
            clauses.append("id = ANY(:ids)")
            params["ids"] = list(self.ids)
        for column, value in (("queue", self.queue), ("actor", self.actor), ("tenant_id", self.tenant),
                              ("status", self.status)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if self.error:
            clauses.append("(exception_type ILIKE :error OR exception_message ILIKE :error)")
            params["error"] = f"%{self.error}%"
        if self.since:
            clauses.append("last_failed_at >= :since")
            params["since"] = self.since
        if self.until:
            clauses.append("last_failed_at < :until")
            params["until"] = self.until
        return (" AND ".join(clauses) or "true"), params


def list_failures(conn: Connection, filters: Filters, limit: int = 100) -> list[dict[str, Any]]:
    where, params = filters.where()
    rows = conn.execute(text(f"""
        SELECT id, tenant_id, queue, actor, message_id, ref_id, exception_type, exception_message, attempts,
               status, first_failed_at, last_failed_at, replayed_at
        FROM job_failures WHERE {where} ORDER BY last_failed_at DESC, id LIMIT :limit"""),
        {**params, "limit": limit}).mappings().all()
    return [dict(r) for r in rows]


def counts_by_error(conn: Connection, filters: Filters) -> list[dict[str, Any]]:
    where, params = filters.where()
    rows = conn.execute(text(f"""
        SELECT exception_type, status, count(*) AS count FROM job_failures WHERE {where}
        GROUP BY 1, 2 ORDER BY 3 DESC, 1"""), params).mappings().all()
    return [dict(r) for r in rows]


def show(conn: Connection, failure_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(text("SELECT * FROM job_failures WHERE id = :id"), {"id": failure_id}).mappings().first()
    return dict(row) if row else None


def stats(conn: Connection) -> dict[str, Any]:
    by_status: dict[str, int] = dict(conn.execute(text("SELECT status, count(*) FROM job_failures GROUP BY 1")).all())
    by_queue = [dict(r) for r in conn.execute(text(
        "SELECT queue, actor, count(*) AS dead, max(last_failed_at) AS last_failed_at FROM job_failures "
        "WHERE status = 'dead' GROUP BY 1, 2 ORDER BY 3 DESC")).mappings()]
    return {"by_status": {s: by_status.get(s, 0) for s in STATUSES}, "dead_by_actor": by_queue}


def count(conn: Connection, filters: Filters) -> int:
    where, params = filters.where()
    return int(conn.execute(text(f"SELECT count(*) FROM job_failures WHERE {where}"), params).scalar_one())


def discard(conn: Connection, filters: Filters) -> int:
    where, params = filters.where()
    result = conn.execute(text(f"UPDATE job_failures SET status = 'discarded' WHERE status = 'dead' AND {where}"),
                          params)
    return int(result.rowcount)


def fresh_message(stored: dict[str, Any]) -> dramatiq.Message[Any]:
    """The stored message, ready to run again: same id, no attempt history, a new timestamp."""
    return dramatiq.Message(
        queue_name=stored["queue_name"], actor_name=stored["actor_name"], args=tuple(stored.get("args") or ()),
        kwargs=dict(stored.get("kwargs") or {}), options=dict(stored.get("options") or {}),
        message_id=stored["message_id"], message_timestamp=int(time.time() * 1000),
    )


def replay(
    engine: Engine, broker: Any, filters: Filters, *, batch: int = 500, rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[uuid.UUID]:
    """Replay matching dead failures in bounded batches; yields each replayed failure's id."""
    started = datetime.now().astimezone()
    where, params = filters.where()
    client = broker.client
    pause = 1.0 / rate if rate else 0.0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(text(f"""
                SELECT id, queue, message FROM job_failures
                WHERE status = 'dead' AND last_failed_at < :started AND {where}
                ORDER BY last_failed_at, id LIMIT :batch FOR UPDATE SKIP LOCKED"""),
                {**params, "started": started, "batch": batch}).all()
            if not rows:
                return
            for row in rows:
                stored = dict(row.message)
                broker.enqueue(fresh_message(stored))
                dead_id = stored.get("redis_message_id")
                if dead_id:
                    pipe = client.pipeline()
                    pipe.zrem(f"{broker.namespace}:{row.queue}.XQ", dead_id)
                    pipe.hdel(f"{broker.namespace}:{row.queue}.XQ.msgs", dead_id)
                    pipe.execute()
                if pause:
                    time.sleep(pause)
            conn.execute(text("UPDATE job_failures SET status = 'replayed', replayed_at = now() WHERE id = ANY(:ids)"),
                         {"ids": [r.id for r in rows]})
        for row in rows:
            yield row.id
        if on_progress is not None:
            on_progress(len(rows))
