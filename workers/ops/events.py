"""Stored inbound events for operators: list them with filters, and send them through the pipeline again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, select, true, update

from db.schema import inbound_events

STATUSES = ("received", "processed", "failed")
LISTED = ("id", "tenant_id", "inbox_id", "channel", "dedupe_key", "status", "attempts", "error", "received_at",
          "processed_at")


@dataclass(frozen=True)
class Filters:
    ids: tuple[uuid.UUID, ...] = ()
    status: str | None = None
    tenant: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def any(self) -> bool:
        return bool(self.ids or self.status or self.tenant or self.since or self.until)

    def where(self) -> ColumnElement[bool]:
        c = inbound_events.c
        clauses: list[ColumnElement[bool]] = []
        if self.ids:
            clauses.append(c.id.in_(self.ids))
        if self.status is not None:
            clauses.append(c.status == self.status)
        if self.tenant is not None:
            clauses.append(c.tenant_id == self.tenant)
        if self.since is not None:
            clauses.append(c.received_at >= self.since)
        if self.until is not None:
            clauses.append(c.received_at < self.until)
        return and_(true(), *clauses)


def list_events(conn: Connection, filters: Filters, limit: int = 50) -> list[dict[str, Any]]:
    """The newest events that match, without their bodies."""
    columns = [inbound_events.c[name] for name in LISTED]
    query = select(*columns).where(filters.where()).order_by(inbound_events.c.received_at.desc()).limit(limit)
    return [dict(row) for row in conn.execute(query).mappings()]


def count(conn: Connection, filters: Filters) -> int:
    return int(conn.execute(select(func.count()).select_from(inbound_events).where(filters.where())).scalar_one())


def reprocess(conn: Connection, filters: Filters, send: Callable[[uuid.UUID, list[str]], None],
              *, chunk: int = 100) -> int:
    """Mark the matching events for another run and send them to the ingest queue, `chunk` per job.

    Failed events stay `failed` until their job runs them (it is sent with `retry_failed`), so no other
    batch takes them up meanwhile; the others go back to `received`. Sending is the caller's (it knows the
    broker); call this inside a transaction that commits after the sends.
    """
    c = inbound_events.c
    rows = conn.execute(
        update(inbound_events).where(filters.where())
        .values(status=case((c.status == "failed", "failed"), else_="received"), enqueued_at=func.now())
        .returning(c.tenant_id, c.id)
    ).all()
    by_tenant: dict[uuid.UUID, list[str]] = {}
    for tenant_id, event_id in rows:
        by_tenant.setdefault(tenant_id, []).append(str(event_id))
    for tenant_id, event_ids in by_tenant.items():
        for start in range(0, len(event_ids), chunk):
            send(tenant_id, event_ids[start:start + chunk])
    return len(rows)
