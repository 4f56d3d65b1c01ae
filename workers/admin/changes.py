"""The change feed's reading endpoints: a page after a seq, and a Server-Sent Events stream that follows it.

    GET /v1/admin/tenants/{id}/changes?after=SEQ&limit=N&types=a,b   -> {"items": [...], "next_after": SEQ}
    GET /v1/admin/tenants/{id}/changes/stream                          -> text/event-stream

Both read the tenant's `change_events` as the fleet's role bound to the tenant (row-level security holds,
whoever the key), through `pipelines.changes.read`, as `intake changes list|tail` do. A tenant key naming
another tenant gets 404, as an unknown tenant does: the feed does not say which tenants exist.

The stream sends each event as `id: <seq>`, `event: <type>`, `data: <the item as JSON>`, and resumes after
the `Last-Event-ID` header a reconnecting EventSource sends (or `?after=`; the header wins). It is woken by
the process's one LISTEN connection (`workers.admin.feed`) and otherwise sends a comment every
INTAKE_SSE_HEARTBEAT_SECONDS, which keeps proxies from closing it and finds a vanished client. It holds at
most one page of events at a time: a client that reads slowly makes its own stream wait (the server's writes
wait for the socket), and nothing else; a disconnect ends it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from db.tenancy import TenantId
from pipelines import changes
from pipelines.control.errors import Invalid, NotFound
from pipelines.control.fields import Model
from workers.admin.data import as_fleet
from workers.admin.http import Call, Endpoint

PREFIX = "/v1/admin"
MAX_SEQ = 2**63 - 1
MAX_LIMIT = 1000
STREAM_PAGE = 100
EXISTS = text("SELECT 1 FROM tenants WHERE id = :t")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class _Filter(Model):
    types: str | None = Field(default=None, max_length=1000,
                              description="Comma-separated event types, e.g. message.received,contact.merged")

    @field_validator("types")
    @classmethod
    def _types(cls, value: str | None) -> str | None:
        changes.parse_types(value)
        return value


class ChangesQuery(_Filter):
    after: int = Field(default=0, ge=0, le=MAX_SEQ, description="Events after this seq (0: from the oldest kept)")
    limit: int = Field(default=100, ge=1, le=MAX_LIMIT, description="At most this many events (1-1000)")


class StreamQuery(_Filter):
    after: int | None = Field(default=None, ge=0, le=MAX_SEQ,
                              description="Start after this seq; a Last-Event-ID header takes precedence")


class ChangeItem(BaseModel):
    seq: int
    id: uuid.UUID
    type: str
    created_at: datetime
    data: dict[str, Any]


class ChangesPage(BaseModel):
    items: list[ChangeItem]
    next_after: int = Field(description="Ask again with after= this: the last item's seq, or `after` when empty")


def _tenant(call: Call) -> TenantId:
    """The tenant named in the path, when this key may read it and it exists; else 404."""
    wanted = call.ids["tenant_id"]
    if not call.principal.operator and wanted != call.principal.tenant_id:
        raise NotFound("no such tenant")
    tenant = TenantId(wanted)
    with as_fleet(call, tenant).begin() as conn:
        if conn.execute(EXISTS, {"t": tenant}).first() is None:
            raise NotFound("no such tenant")
    return tenant


def list_changes(call: Call) -> ChangesPage:
    query: ChangesQuery = call.query
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        items = changes.read(conn, tenant, after=query.after, limit=query.limit,
                             types=changes.parse_types(query.types))
    return ChangesPage(items=[ChangeItem(**i.__dict__) for i in items],
                       next_after=items[-1].seq if items else query.after)


def last_event_id(value: str | None) -> int | None:
    """The seq of a Last-Event-ID header (None when absent or empty); anything but a seq is refused (422)."""
    if value is None or not value.strip():
        return None
    plain = value.strip()
    if not (plain.isascii() and plain.isdigit()) or len(plain) > 19 or int(plain) > MAX_SEQ:
        raise Invalid({"Last-Event-ID": f"must be an event's seq, a whole number from 0 to {MAX_SEQ}"})
    return int(plain)


def stream_changes(call: Call) -> StreamingResponse:
    query: StreamQuery = call.query
    resume = last_event_id(call.headers.get("last-event-id"))
    tenant = _tenant(call)
    after = resume if resume is not None else (query.after or 0)
    types = changes.parse_types(query.types)
    return StreamingResponse(_events(call, tenant, after, types), media_type="text/event-stream",
                             headers=SSE_HEADERS)


def sse(item: changes.Item) -> bytes:
    """One event in the text/event-stream format: the data is the item as the poll API shows it, on one line."""
    return (f"id: {item.seq}\nevent: {item.type}\ndata: ".encode() + orjson.dumps(item.as_dict()) + b"\n\n")


async def _events(call: Call, tenant: TenantId, after: int, types: list[str] | None) -> AsyncIterator[bytes]:
    admin = call.admin
    heartbeat = admin.settings.sse_heartbeat_seconds
    subscription = admin.feed.subscribe(tenant)  # before the first read: nothing committed after it is missed

    def page(after: int) -> list[changes.Item]:
        with as_fleet(call, tenant).begin() as conn:
            return changes.read(conn, tenant, after=after, limit=STREAM_PAGE, types=types)

    try:
        yield b": connected\n\n"
        while not subscription.closed:
            subscription.clear()
            items = await run_in_threadpool(page, after)
            for item in items:
                yield sse(item)
                after = item.seq
            if len(items) == STREAM_PAGE:
                continue  # more waiting: read on before sleeping
            if not await subscription.wait(heartbeat):
                yield b": heartbeat\n\n"
    finally:
        admin.feed.unsubscribe(subscription)


def endpoints() -> list[Endpoint]:
    path = f"{PREFIX}/tenants/{{tenant_id}}/changes"
    return [
        Endpoint("GET", path, "A page of the tenant's change feed after a seq, oldest first", list_changes,
                 ChangesPage, query=ChangesQuery),
        Endpoint("GET", path + "/stream", "The tenant's change feed as Server-Sent Events, resumable by "
                 "Last-Event-ID", stream_changes, None, query=StreamQuery, media_type="text/event-stream"),
    ]
