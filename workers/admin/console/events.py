"""Stored inbound events in the console: search, one event's headers and body, reprocess.

What a provider sent is shown as stored, pretty-printed, with every credential left out: headers that
authenticate a delivery (signatures, Basic auth, bot tokens) and body fields whose names mark a secret
(Mailgun signs in the body) are replaced by a note, never shown, not even in part.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qsl

from pydantic import Field
from sqlalchemy import select
from starlette.responses import Response
from starlette.routing import Route

from db.schema import inbound_events
from pipelines.audit import SECRET_MARKERS
from pipelines.channels.base import PayloadError, WebhookRequest, form_fields
from pipelines.control.errors import Invalid, NotFound
from pipelines.control.fields import Short
from workers.admin import operations as api
from workers.admin.console.web import Console, Visit, checked, offset_of, page, parse_uuid, redirect
from workers.ops import events as event_ops

PAGE_SIZE = 50
SHOWN_BODY_BYTES = 65_536
HIDDEN = "(hidden: a credential)"
# Header or field names that carry a credential, besides the audit trail's markers.
CREDENTIALS = (*SECRET_MARKERS, "signature", "cookie", "hub-signature", "x-twilio-signature")
FILTERS = ("tenant_id", "inbox_id", "status", "since", "until", "dedupe_key")
STATUS_CHOICES = ("", "received", "queued", "processed", "failed")


class EventSearch(api.EventQuery):
    inbox_id: uuid.UUID | None = None
    dedupe_key: Short | None = Field(default=None, description="The provider's id of the delivery, exactly")


def is_credential(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in CREDENTIALS)


def without_credentials(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: HIDDEN if is_credential(str(k)) else without_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_credentials(v) for v in value]
    return value


def pretty_body(body: bytes, content_type: str) -> str:
    """JSON and forms (URL-encoded, or multipart as Mailgun may sign them, file parts left out) as indented
    JSON without credentials; anything else (an email) as text; at most SHOWN_BODY_BYTES characters."""
    if not body:
        return "(empty, or purged by the retention policy)"
    kind = content_type.split(";")[0].strip().lower()
    if kind.endswith("json") or body[:1] in (b"{", b"["):
        try:
            return _capped(json.dumps(without_credentials(json.loads(body)), indent=2, ensure_ascii=False))
        except (ValueError, RecursionError):
            pass
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            fields = _form(body, kind, content_type)
        except (PayloadError, LookupError, ValueError):
            return "(a form that cannot be read again: not shown, as it may hold a credential)"
        return _capped(json.dumps(without_credentials(fields), indent=2, ensure_ascii=False))
    text = body[:SHOWN_BODY_BYTES].decode("utf-8", "replace")
    return text + ("\n… (truncated)" if len(body) > SHOWN_BODY_BYTES else "")


def _form(body: bytes, kind: str, content_type: str) -> dict[str, Any]:
    """A form's fields by name (a repeated field as a list). ValueError: more fields than are read."""
    if kind == "application/x-www-form-urlencoded":
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10_000))
    fields = form_fields(WebhookRequest("POST", "", {"content-type": content_type}, body))
    return {name: values[0] if len(values) == 1 else values for name, values in fields.items()}


def _capped(text: str) -> str:
    return text[:SHOWN_BODY_BYTES] + ("\n… (truncated)" if len(text) > SHOWN_BODY_BYTES else "")


def list_page(visit: Visit) -> Response:
    given = {name: visit.value(name) for name in FILTERS if visit.value(name)}
    if not visit.principal.operator:
        given.pop("tenant_id", None)
    offset = visit.value("offset") or "0"
    errors: dict[str, str] = {}
    items: list[api.EventView] = []
    more = False
    try:
        q = checked(EventSearch, {**given, "offset": offset, "limit": PAGE_SIZE})
        call = visit.call(query=q)
        filters = event_ops.Filters(status=q.status, tenant=call.scope_tenant(q.tenant_id), since=q.since,
                                    until=q.until)
        c = inbound_events.c
        query = select(*(c[name] for name in api.EventView.model_fields)).where(filters.where())
        if q.inbox_id is not None:
            query = query.where(c.inbox_id == q.inbox_id)
        if q.dedupe_key is not None:
            query = query.where(c.dedupe_key == q.dedupe_key)
        with call.transaction() as conn:
            rows = conn.execute(query.order_by(c.received_at.desc(), c.id).limit(PAGE_SIZE + 1)
                                .offset(q.offset)).mappings().all()
        items = [api.EventView.model_validate(row) for row in rows[:PAGE_SIZE]]
        more = len(rows) > PAGE_SIZE
    except Invalid as exc:
        errors = exc.fields
    return visit.render("events.html", title="Events", items=items, more=more, filters=given, errors=errors,
                        statuses=STATUS_CHOICES, offset=offset_of(offset), page_size=PAGE_SIZE)


def detail_page(visit: Visit) -> Response:
    event_id = parse_uuid(visit.request.path_params["event_id"], "event")
    call = visit.call(owner=("event", event_id))
    with call.transaction() as conn:
        row = conn.execute(select(inbound_events).where(inbound_events.c.id == event_id)).mappings().first()
    if row is None:
        raise NotFound(f"no event {event_id}")
    headers = {k: HIDDEN if is_credential(k) else v for k, v in sorted(dict(row["headers"] or {}).items())}
    return visit.render("event.html", title="Event", event=row,
                        headers=json.dumps(headers, indent=2, ensure_ascii=False),
                        body=pretty_body(bytes(row["body"] or b""), row["content_type"] or ""))


def reprocess(visit: Visit) -> Response:
    event_id = parse_uuid(visit.request.path_params["event_id"], "event")
    call = visit.call(owner=("event", event_id))
    call.body = api.Reprocess(ids=[event_id])
    job = api.reprocess_events(call)
    return redirect(f"/jobs/{job.id}")


def routes(console: Console) -> list[Route]:
    return [
        Route("/events", page(console, list_page), methods=["GET"]),
        Route("/events/{event_id}", page(console, detail_page), methods=["GET"]),
        Route("/events/{event_id}/reprocess", page(console, reprocess), methods=["POST"]),
    ]
