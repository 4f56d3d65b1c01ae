"""The audit trail: one `audit_logs` row for every change an operator or a tenant makes.

A row says who (an API key's name and id, or the OS user of a command), what (`action` such as
`inbox.rotate_secrets`, and the subject), in which tenant, the subject before and after, when, and the
request that did it. Rows are written in the transaction of the change they describe, so a change and its
record commit together or not at all.

No secret ever reaches a row: `before` and `after` pass through `redacted`, which drops every key that
names a secret at any depth, whatever the caller handed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, insert, select, true

from db.schema import audit_logs

# A key whose lower-cased name contains one of these is a secret, or holds some.
SECRET_MARKERS = ("secret", "password", "token", "key_hash", "api_key", "signing_key", "auth")


@dataclass(frozen=True)
class Actor:
    """Who makes a change: an API key (`key_id` set) or a person at the command line.

    `operator` says whether the change is made with an operator's authority: an operator key, or a person at
    the command line (who holds the database owner's rights). A tenant key's changes are not, and the control
    plane refuses them what only an operator may change (`pipelines.control.settings`). Unset, it is not: an
    actor that forgot to say is refused rather than trusted."""

    name: str
    key_id: uuid.UUID | None = None
    request_id: str | None = None
    operator: bool = False


def redacted(value: Any) -> Any:
    """`value` as JSON-ready data with every secret-named key left out, at any depth."""
    if isinstance(value, Mapping):
        return {str(k): redacted(v) for k, v in value.items()
                if not any(marker in str(k).lower() for marker in SECRET_MARKERS)}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    if isinstance(value, uuid.UUID | datetime):
        return str(value)
    return value


def record(conn: Connection, *, actor: Actor | str, action: str, tenant_id: uuid.UUID | None,
           subject_type: str, subject_id: str | uuid.UUID, before: Mapping[str, Any] | None = None,
           after: Mapping[str, Any] | None = None, request_id: str | None = None) -> uuid.UUID:
    """Write one audit row in the caller's transaction (bound to `tenant_id` when it has one)."""
    who = actor if isinstance(actor, Actor) else Actor(actor)
    row_id = uuid.uuid4()
    conn.execute(insert(audit_logs).values(
        id=row_id, tenant_id=tenant_id, actor=who.name, actor_key_id=who.key_id, action=action,
        subject_type=subject_type, subject_id=str(subject_id),
        before=None if before is None else redacted(before),
        after=None if after is None else redacted(after),
        request_id=request_id or who.request_id,
    ))
    return row_id


@dataclass(frozen=True)
class AuditFilters:
    tenant: uuid.UUID | None = None
    action: str | None = None
    since: datetime | None = None

    def where(self) -> ColumnElement[bool]:
        c = audit_logs.c
        clauses: list[ColumnElement[bool]] = []
        if self.tenant is not None:
            clauses.append(c.tenant_id == self.tenant)
        if self.action is not None:
            # `inbox` matches every inbox action, `inbox.disable` that one.
            clauses.append((c.action == self.action) | c.action.startswith(self.action + ".", autoescape=True))
        if self.since is not None:
            clauses.append(c.created_at >= self.since)
        return and_(true(), *clauses)


AUDIT_COLUMNS = ("id", "tenant_id", "actor", "actor_key_id", "action", "subject_type", "subject_id", "before",
                 "after", "request_id", "created_at")


def list_entries(conn: Connection, filters: AuditFilters, *, limit: int, offset: int) -> list[dict[str, Any]]:
    """Audit rows the connection may see, newest first."""
    c = audit_logs.c
    query = (select(*(c[name] for name in AUDIT_COLUMNS)).where(filters.where())
             .order_by(c.created_at.desc(), c.id).limit(limit).offset(offset))
    return [dict(row) for row in conn.execute(query).mappings()]
