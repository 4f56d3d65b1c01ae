"""Pieces the control plane's modules share: pages, database refusals turned into answers, ownership."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, Table, select
from sqlalchemy.exc import IntegrityError

from db import schema
from pipelines.control.errors import Conflict, Invalid, NotFound
from pipelines.control.models import Listing, Page

T = TypeVar("T")

UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"

# What an id in a URL may name, and the table that holds it.
KINDS: dict[str, Table] = {
    "tenant": schema.tenants, "inbox": schema.inboxes, "team": schema.teams, "persona": schema.ai_personas,
    "failure": schema.job_failures, "event": schema.inbound_events, "conversation": schema.conversations,
    "message": schema.messages, "draft": schema.ai_drafts, "webhook_endpoint": schema.webhook_endpoints,
}


def paged(conn: Connection, query: Select[Any], page: Page, convert: Callable[[Any], T]) -> Listing[T]:
    """One page of `query` (already ordered): one row more than asked tells whether another page follows."""
    rows = conn.execute(query.limit(page.limit + 1).offset(page.offset)).mappings().all()
    more = len(rows) > page.limit
    return Listing[T](items=[convert(row) for row in rows[: page.limit]],
                      next_offset=page.offset + page.limit if more else None)


@contextmanager
def refusals(*, conflict: str, foreign: dict[str, str] | None = None) -> Iterator[None]:
    """Unique violations become Conflict(`conflict`); foreign-key violations become Invalid on the field
    whose constraint name appears in `foreign` (field -> message)."""
    try:
        yield
    except IntegrityError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code == UNIQUE_VIOLATION:
            raise Conflict(conflict) from None
        if code == FOREIGN_KEY_VIOLATION and foreign:
            constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "") or ""
            fields = {field: message for field, message in foreign.items() if field in constraint}
            raise Invalid(fields or dict(foreign)) from None
        raise


def owner_of(conn: Connection, kind: str, object_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant an object belongs to (for a tenant, itself), or None when there is no such object or it
    belongs to no tenant. Run as the maintenance role, before any tenant is bound."""
    table = KINDS[kind]
    column = table.c.id if kind == "tenant" else table.c.tenant_id
    found = conn.execute(select(column, table.c.id).where(table.c.id == object_id)).first()
    if found is None:
        raise NotFound(f"no {kind} {object_id}")
    return None if found[0] is None else uuid.UUID(str(found[0]))


def one(row: Any, kind: str, object_id: uuid.UUID) -> Any:
    if row is None:
        raise NotFound(f"no {kind} {object_id}")
    return row


def changed_fields(request: Any, skip_null: Sequence[str] = ()) -> dict[str, Any]:
    """The fields a PATCH request set; a null for a column that cannot be null means "leave it"."""
    values: dict[str, Any] = request.model_dump(exclude_unset=True)
    return {k: v for k, v in values.items() if not (v is None and k in skip_null)}
