"""The ingest pipeline: stored inbound events in, contacts, conversations and messages out.

`ingest_events` runs inside the caller's transaction and never commits. It parses each stored event
again (the raw event is the source of truth), resolves the sender to a contact, threads the message,
stores it exactly once, applies delivery-status updates, and marks the events processed. Events that no
adapter can parse are marked failed and reported, without holding up the rest of the batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines import normalize
from pipelines.channels import ADAPTERS, InboundMessage, StatusUpdate, WebhookRequest
from pipelines.contacts import resolve_contact
from pipelines.conversations import find_or_open

log = structlog.get_logger("intake.ingest")

LOAD_EVENTS = text("""
SELECT e.id, e.inbox_id, e.channel, e.content_type, e.headers, e.body, e.received_at, i.settings
FROM inbound_events e JOIN inboxes i ON i.id = e.inbox_id
WHERE e.tenant_id = :t AND e.id = ANY(:ids) AND e.status <> 'processed'
ORDER BY e.received_at, e.id
FOR UPDATE OF e SKIP LOCKED
""")
INSERT_MESSAGE = text("""
INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, event_id, direction, kind, external_id,
                      rfc_message_id, subject, content, content_html, quoted_text, attachments, metadata,
                      status, sent_at, received_at)
VALUES (:t, :inbox, :conversation, :contact, :event, 'inbound', :kind, :external_id, :rfc_id, :subject, :content,
        :html, :quoted, CAST(:attachments AS jsonb), CAST(:metadata AS jsonb), 'received', :sent_at, :received_at)
ON CONFLICT (tenant_id, inbox_id, external_id) DO NOTHING
RETURNING id
""")
COUNT_MESSAGE = text("""
UPDATE conversations SET
    message_count = message_count + 1,
    inbound_count = inbound_count + 1,
    first_message_at = LEAST(first_message_at, :sent_at),
    awaiting_reply = CASE WHEN last_message_at IS NULL OR :sent_at >= last_message_at THEN true
                          ELSE awaiting_reply END,
    last_message_at = GREATEST(last_message_at, :sent_at),
    last_inbound_at = GREATEST(last_inbound_at, :sent_at),
    subject = COALESCE(subject, :subject),
    updated_at = now()
WHERE tenant_id = :t AND id = :conversation
""")
APPLY_EDIT = text("""
UPDATE messages SET content = :content,
       metadata = metadata || jsonb_build_object('edited', true, 'edited_at', CAST(:at AS text))
WHERE tenant_id = :t AND inbox_id = :inbox AND external_id = :external_id
RETURNING id
""")
# Status only moves forward: queued < sent < delivered < read; failed ranks with delivered, so a late
# "failed" after "delivered" (or the reverse) does not overwrite the other.
RANK = "CASE {col} WHEN 'queued' THEN 1 WHEN 'sent' THEN 2 WHEN 'failed' THEN 3 WHEN 'delivered' THEN 3 " \
       "WHEN 'read' THEN 4 ELSE 0 END"
APPLY_STATUS = text(f"""
UPDATE messages SET status = :status, status_error = COALESCE(:error, status_error), status_updated_at = :at
WHERE tenant_id = :t AND inbox_id = :inbox AND external_id = :external_id AND direction = 'outbound'
  AND {RANK.format(col='CAST(:status AS text)')} > {RANK.format(col='status')}
RETURNING id
""")
MARK_PROCESSED = text("""
UPDATE inbound_events SET status = 'processed', processed_at = now(), attempts = attempts + 1, error = NULL
WHERE tenant_id = :t AND id = ANY(:ids)
""")
MARK_FAILED = text("""
UPDATE inbound_events SET status = 'failed', attempts = attempts + 1, error = :error
WHERE tenant_id = :t AND id = :id
""")


@dataclass(frozen=True)
class IngestPolicy:
    """Fleet-wide defaults; an inbox's settings override them."""

    default_region: str = "US"
    reopen_window: timedelta = timedelta(hours=72)


@dataclass
class IngestResult:
    events: int = 0
    messages_created: list[uuid.UUID] = field(default_factory=list)
    duplicates: int = 0
    statuses_applied: int = 0
    failed: dict[uuid.UUID, str] = field(default_factory=dict)


def request_from_event(row: Any) -> WebhookRequest:
    headers = dict(row.headers or {})
    return WebhookRequest(method="POST", url=headers.get("x-intake-url", ""), headers=headers,
                          body=bytes(row.body), received_at=row.received_at)


def ingest_events(conn: Connection, tenant: TenantId, event_ids: list[uuid.UUID], policy: IngestPolicy) -> IngestResult:
    result = IngestResult()
    processed: list[uuid.UUID] = []
    for row in conn.execute(LOAD_EVENTS, {"t": tenant, "ids": event_ids}).all():
        result.events += 1
        adapter = ADAPTERS.get(row.channel)
        try:
            if adapter is None:
                raise ValueError(f"no adapter for channel {row.channel!r}")
            delivery = adapter.parse(request_from_event(row))
        except Exception as exc:  # a stored event that no longer parses: keep it, mark it, report it
            message = f"{type(exc).__name__}: {exc}"
            conn.execute(MARK_FAILED, {"t": tenant, "id": row.id, "error": message[:2000]})
            result.failed[row.id] = message
            log.warning("ingest.event.corrupt", event_id=str(row.id), error=message)
            continue
        settings = row.settings or {}
        region = str(settings.get("default_region") or policy.default_region)
        window = timedelta(hours=float(settings.get("reopen_window_hours", policy.reopen_window.total_seconds() / 3600)))
        for message in delivery.messages:
            created = store_inbound(conn, tenant, row.inbox_id, row.id, message, region=region,
                                    reopen_window=window, received_at=row.received_at)
            if created is None:
                result.duplicates += 1
            else:
                result.messages_created.append(created)
        for status in delivery.statuses:
            result.statuses_applied += apply_status(conn, tenant, row.inbox_id, status)
        processed.append(row.id)
    if processed:
        conn.execute(MARK_PROCESSED, {"t": tenant, "ids": processed})
    return result


def store_inbound(
    conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, event_id: uuid.UUID, message: InboundMessage, *,
    region: str, reopen_window: timedelta, received_at: datetime,
) -> uuid.UUID | None:
    """Store one inbound message; None when it was already stored (or was an edit of a stored one)."""
    content, html, quoted = _content(message)
    if message.edited:
        edited = conn.execute(APPLY_EDIT, {"t": tenant, "inbox": inbox_id, "external_id": message.external_id,
                                           "content": content, "at": message.sent_at.isoformat()}).first()
        if edited is not None:
            return None
    identities = [normalize.identity(i, region) for i in message.identities]
    name = normalize.display_name(message.sender_name, *(v for _, v in identities))
    contact = resolve_contact(conn, tenant, identities, name)
    references = (*(r for r in [message.in_reply_to] if r), *message.references) if message.kind == "email" else ()
    conversation = find_or_open(conn, tenant, inbox_id, contact, sent_at=message.sent_at,
                                reopen_window=reopen_window, references=references, subject=message.subject)
    metadata = dict(message.metadata)
    if message.headers:
        metadata["headers"] = message.headers
    if message.recipients:
        metadata["recipients"] = list(message.recipients)
    if message.in_reply_to:
        metadata["in_reply_to"] = message.in_reply_to
    created = conn.execute(INSERT_MESSAGE, {
        "t": tenant, "inbox": inbox_id, "conversation": conversation, "contact": contact, "event": event_id,
        "kind": message.kind, "external_id": message.external_id, "rfc_id": message.rfc_message_id,
        "subject": message.subject, "content": content, "html": html, "quoted": quoted,
        "attachments": orjson.dumps([a.model_dump(exclude_none=True) for a in message.attachments]).decode(),
        "metadata": orjson.dumps(metadata, default=str).decode(),
        "sent_at": message.sent_at, "received_at": received_at,
    }).scalar()
    if created is None:
        return None
    conn.execute(COUNT_MESSAGE, {"t": tenant, "conversation": conversation, "sent_at": message.sent_at,
                                 "subject": message.subject})
    return uuid.UUID(str(created))


def _content(message: InboundMessage) -> tuple[str, str | None, str | None]:
    """(the text people read, the original HTML, the quoted history of an email)."""
    if message.kind != "email":
        return message.text, message.html, None
    body = message.text or (normalize.html_to_text(message.html) if message.html else "")
    reply, quoted = normalize.split_reply(body, message.stripped_reply)
    return reply, message.html, quoted


def apply_status(conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, status: StatusUpdate) -> int:
    row = conn.execute(APPLY_STATUS, {"t": tenant, "inbox": inbox_id, "external_id": status.external_id,
                                      "status": status.status, "error": status.error, "at": status.at}).first()
    return 0 if row is None else 1
