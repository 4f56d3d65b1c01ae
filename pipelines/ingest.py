"""The ingest pipeline: stored inbound events in, contacts, conversations and messages out.

`ingest_events` runs inside the caller's transaction and never commits. It parses each stored event
again (the raw event is the source of truth), resolves the sender to a contact, threads the message,
stores it exactly once, applies delivery-status updates (`pipelines.outbound.statuses`: forward only, kept
when they arrive before their message), and marks the events processed.

One bad event has a blast radius of one. The batch is stored set-wise inside a savepoint; if that fails
for a reason that is not retryable (see `pipelines.errors`), the savepoint is rolled back and the batch is
halved, each half stored in a savepoint of its own and halved again if it fails, until the culprits stand
alone (a few attempts for one culprit, where going event by event would take one per event). An event that
fails alone, or does not parse, is marked `failed` with its error and returned in `IngestResult.failed`
for the caller to record; the others are stored. A retryable error (a lost connection, a lock timeout, a
deadlock) still fails the whole job, which retries with every event where it was. A `failed` event is
never taken again, neither as a top-up nor by an ordinary job naming it: only a job with `retry_failed`
(a replay) runs it again.

One ingest transaction runs per tenant at a time (a transaction-level advisory lock): concurrent batches of
one tenant share senders, and would otherwise meet on the same identities and contacts in opposite orders.
Tenants run in parallel; within a tenant, throughput comes from batch size, not from threads. A job waits
for its tenant's turn for at most `TENANT_WAIT_MS` (so a flooding tenant cannot hold worker threads for
long while other tenants' jobs wait); then it raises `TenantBusy` with its events still waiting, and the
actor sends them again a moment later.

A job may top its batch up with its tenant's oldest waiting (`received`) events. Batches then grow exactly
when the fleet falls behind, and the per-job cost is paid once for many events. A job that finds its own
events already stored (or set aside) by another batch returns at once. Waiting events are taken only when
no one holds them (SKIP LOCKED); a top-up that fails is set aside like the job's own events, so it is
recorded once, by the batch that found it at fault.

Every row the batch creates or moves is told to the change feed (`pipelines.changes`): `contact.created`,
`contact.merged`, `conversation.opened`, `conversation.reopened`, `message.received` and
`message.status_updated`, built from the rows
the batch's statements return (no read is added for them). Each attempt that stores keeps its events in its
result; one that fails leaves none, with its savepoint. They are recorded in one call when the batch is
done, the transaction's last statement: the feed's head is then locked only from there to the commit, and
never while a later attempt of the same batch waits for a conversation that an AI job, itself waiting
for the head, holds.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import orjson
import structlog
from psycopg.errors import LockNotAvailable
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from db import batch, direct
from db.tenancy import TenantId
from pipelines import changes, normalize
from pipelines.changes import MESSAGE_COLUMNS, Change, columns
from pipelines.channels import ADAPTERS, Delivery, InboundMessage, StatusUpdate, WebhookRequest
from pipelines.contacts import resolve_contacts
from pipelines.conversations import ThreadRequest, find_or_open_many
from pipelines.errors import RetryableError, describe, is_retryable
from pipelines.lifecycle import sla
from pipelines.outbound import statuses

log = structlog.get_logger("intake.ingest")

TENANT_WAIT_MS = 1000
# An ingest job's start in one round trip (migration 0022): it binds the tenant, returns nothing when none of
# the job's own events (`ids`, in `statuses`) waits any more, else takes the tenant's turn (waiting at most
# `wait` ms: lock_timeout, which also bounds any later lock wait of the transaction, and with one ingest
# transaction per tenant those are only waits on other writers, a retryable error if ever reached), and
# returns the job's own events locked in one global order (`own`), then up to `n` of the tenant's oldest
# waiting events that nobody holds, read from the waiting index alone. Five round trips before, each a
# statement of its own with its own snapshot, as they still are inside the function.
# The headers and the inbox's settings come as JSON text, which orjson reads several times faster than
# psycopg's loader.
TAKE = text("SELECT * FROM intake_ingest_take(:t, CAST(:ids AS uuid[]), CAST(:statuses AS text[]), :wait, :n)")
# The batch's events are marked processed by the same statement (one round trip less than a statement of
# their own; the two touch different tables, and the messages' foreign keys are checked at its end).
INSERT_MESSAGES = text(f"""
WITH processed AS (
    UPDATE inbound_events SET status = 'processed', processed_at = now(), attempts = attempts + 1, error = NULL
    WHERE tenant_id = :t AND id = ANY(CAST(:processed AS uuid[]))
)
INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, event_id, direction, kind, external_id,
                      rfc_message_id, subject, content, content_html, quoted_text, attachments, metadata,
                      status, sent_at, received_at)
SELECT :t, inbox, conversation, contact, event, 'inbound', kind, external_id, rfc_id, subject, content, html,
       quoted, attachments, metadata, 'received', sent_at, received_at
FROM json_to_recordset(CAST(:rows AS json))
     AS m(inbox uuid, conversation uuid, contact uuid, event uuid, kind text, external_id text, rfc_id text,
          subject text, content text, html text, quoted text, attachments jsonb, metadata jsonb,
          sent_at timestamptz, received_at timestamptz)
ON CONFLICT (tenant_id, inbox_id, external_id) DO NOTHING
RETURNING id, conversation_id, sent_at, subject, {columns(MESSAGE_COLUMNS, "messages")}
""")
# Counters move only for rows this batch inserted, all conversations in one statement. The conversations are
# found by their ids as an array, whose length the planner knows (json_to_recordset it guesses at 100 rows,
# and a join with that many would read the tenant's conversations whole while the table is small).
COUNT_MESSAGES = text(f"""
UPDATE conversations c SET
    message_count = c.message_count + n.total,
    inbound_count = c.inbound_count + n.total,
    first_message_at = LEAST(c.first_message_at, n.first_at),
    awaiting_reply = CASE WHEN c.last_message_at IS NULL OR n.last_at >= c.last_message_at THEN true
                          ELSE c.awaiting_reply END,
    last_message_at = GREATEST(c.last_message_at, n.last_at),
    last_inbound_at = GREATEST(c.last_inbound_at, n.last_at),
    subject = COALESCE(c.subject, n.subject),
    updated_at = now()
FROM json_to_recordset(CAST(:rows AS json))
     AS n(id uuid, total int, first_at timestamptz, last_at timestamptz, subject text)
WHERE c.tenant_id = :t AND c.id = ANY(CAST(:ids AS uuid[])) AND c.id = n.id
RETURNING c.id, c.priority, c.status = 'open' AND c.sla_started_at IS NULL AS unstarted,
          {columns(changes.CONVERSATION_COLUMNS, "c")}
""")
# The edited message's id when it is stored; its text changes unless its sender was erased (an erased
# person's words must not come back through a late edit).
APPLY_EDIT = text("""
WITH target AS (
    SELECT m.id, c.erased_at IS NOT NULL AS erased
    FROM messages m JOIN contacts c ON c.id = m.contact_id
    WHERE m.tenant_id = :t AND m.inbox_id = :inbox AND m.external_id = :external_id
), edited AS (
    UPDATE messages SET content = :content,
           metadata = metadata || jsonb_build_object('edited', true, 'edited_at', CAST(:at AS text))
    FROM target WHERE messages.id = target.id AND NOT target.erased
    RETURNING messages.id
)
SELECT id FROM target
""")
MARK_PROCESSED = text("""
UPDATE inbound_events SET status = 'processed', processed_at = now(), attempts = attempts + 1, error = NULL
WHERE tenant_id = :t AND id = ANY(CAST(:ids AS uuid[]))
""")
# Each attempt at a batch is a savepoint: one that fails by some event's fault leaves nothing behind.
MARK_FAILED = text("""
UPDATE inbound_events SET status = 'failed', attempts = attempts + 1, error = :error
WHERE tenant_id = :t AND id = :id
""")


class TenantBusy(RetryableError):
    """Another transaction is ingesting this tenant's events; `waiting` are this job's, not yet stored."""

    def __init__(self, waiting: list[uuid.UUID]) -> None:
        super().__init__(f"{len(waiting)} events wait for the tenant's running batch")
        self.waiting = waiting


@dataclass(frozen=True)
class IngestPolicy:
    """Fleet-wide defaults; an inbox's settings override them."""

    default_region: str = "US"
    reopen_window: timedelta = timedelta(hours=72)


@dataclass
class IngestResult:
    events: int = 0  # events this batch took, set aside ones included
    messages_created: list[uuid.UUID] = field(default_factory=list)
    duplicates: int = 0
    statuses_applied: int = 0
    waiting_taken: int = 0  # events of other jobs this batch took
    processed: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, Exception] = field(default_factory=dict)  # events set aside, and why
    changes: list[Change] = field(default_factory=list)  # the change feed's events of what was stored


def request_from_event(row: Any) -> WebhookRequest:
    headers = orjson.loads(row.headers) if row.headers else {}
    return WebhookRequest(method="POST", url=headers.get("x-intake-url", ""), headers=headers,
                          body=bytes(row.body), received_at=row.received_at)


@dataclass(frozen=True)
class _Pending:
    event_id: uuid.UUID
    inbox_id: uuid.UUID
    received_at: datetime
    message: InboundMessage
    region: str
    reopen_window: timedelta


@functools.lru_cache(maxsize=1024)
def _inbox_settings(text: str | None) -> Mapping[str, Any]:
    """An inbox's settings, read as JSON text and parsed once for every event of the inbox (each event's row
    brings them: parsing each copy cost more than reading the event's own columns)."""
    return MappingProxyType((orjson.loads(text) if text else None) or {})


def _pending(row: Any, delivery: Any, policy: IngestPolicy) -> list[_Pending]:
    settings = _inbox_settings(row.settings)
    region = str(settings.get("default_region") or policy.default_region)
    hours = settings.get("reopen_window_hours")
    window = timedelta(hours=float(hours)) if hours is not None else policy.reopen_window
    return [_Pending(row.id, row.inbox_id, row.received_at, m, region, window) for m in delivery.messages]


def ingest_events(conn: Connection, tenant: TenantId, event_ids: list[uuid.UUID], policy: IngestPolicy, *,
                  batch_max: int = 0, retry_failed: bool = False) -> IngestResult:
    """Process a batch of stored events set-wise: a handful of statements for the whole batch.

    Senders are resolved and conversations found with one look-up each for the batch; messages go in
    with one multi-row insert and conversation counters move with one update. Anything unusual (a new
    sender, a merge, an email thread, a reopen) takes the careful one-by-one path. With `batch_max`, the
    batch is topped up to that many events with the tenant's oldest waiting ones. With `retry_failed`,
    the job's own events are run again even when an earlier batch set them aside. Its first statement binds
    the transaction to `tenant` (as `bind_tenant` does), so a caller that has not bound it yet need not.
    """
    result = IngestResult()
    statuses = ["received", "failed"] if retry_failed else ["received"]
    event_ids = list(dict.fromkeys(event_ids))
    try:
        rows = direct.rows(conn, TAKE, {"t": tenant, "ids": batch.uuids(event_ids), "statuses": statuses,
                                        "wait": str(TENANT_WAIT_MS), "n": max(0, batch_max - len(event_ids))})
    except OperationalError as exc:
        if isinstance(exc.orig, LockNotAvailable):
            # Those that another batch stores meanwhile are passed over by the job that runs them again.
            raise TenantBusy(event_ids) from None
        raise
    rows.sort(key=lambda row: (row.received_at, row.id))
    parsed: list[tuple[Any, Delivery]] = []
    for row in rows:
        result.events += 1
        result.waiting_taken += not row.own
        if row.body_purged_at is not None:  # retention or an erasure removed its body: nothing left to do
            direct.run(conn, MARK_PROCESSED, {"t": tenant, "ids": batch.uuids([row.id])})
            result.processed.append(row.id)
            continue
        try:
            parsed.append((row, _parse(row)))
        except Exception as exc:  # a stored event that no longer parses: keep it, set it aside
            _set_aside(conn, tenant, row.id, exc, result)
    if parsed:
        _store_isolated(conn, tenant, parsed, policy, result)
    changes.record(conn, tenant, result.changes)
    return result


def _parse(row: Any) -> Delivery:
    adapter = ADAPTERS.get(row.channel)
    if adapter is None:
        raise ValueError(f"no adapter for channel {row.channel!r}")
    return adapter.parse(request_from_event(row))


def _store_isolated(conn: Connection, tenant: TenantId, parsed: list[tuple[Any, Delivery]], policy: IngestPolicy,
                    result: IngestResult) -> None:
    """Store the batch set-wise; when that fails by some event's fault, halve it until the culprit is alone.

    The halves run in order, each in its own savepoint: one that stores is kept, one that fails is halved
    again, and an event that fails alone is set aside. One culprit among n events costs 2·log2(n) + 1
    attempts, where going event by event would cost n + 1; however many fail, it costs at most 2n - 1.
    """
    error = _attempt(conn, tenant, parsed, policy, result)
    if error is None:
        return
    if len(parsed) == 1:
        _set_aside(conn, tenant, parsed[0][0].id, error, result)
        return
    log.info("ingest.batch.split", events=len(parsed), error=describe(error))
    middle = len(parsed) // 2
    _store_isolated(conn, tenant, parsed[:middle], policy, result)
    _store_isolated(conn, tenant, parsed[middle:], policy, result)


def _attempt(conn: Connection, tenant: TenantId, parsed: list[tuple[Any, Delivery]], policy: IngestPolicy,
             result: IngestResult) -> Exception | None:
    """Store in a savepoint; a failure that is some event's fault leaves nothing behind and is returned.

    A retryable error is nobody's fault: it propagates, and the whole job retries.
    """
    try:
        with direct.savepoint(conn, released=False):
            stored = _store(conn, tenant, parsed, policy)
    except Exception as exc:
        if is_retryable(exc):
            raise
        return exc
    _add(result, stored)
    return None


def _set_aside(conn: Connection, tenant: TenantId, event_id: uuid.UUID, exc: Exception,
               result: IngestResult) -> None:
    error = describe(exc)
    direct.run(conn, MARK_FAILED, {"t": tenant, "id": event_id, "error": error})
    result.failed[event_id] = exc
    log.warning("ingest.event.failed", event_id=str(event_id), error=error)


def _add(result: IngestResult, stored: IngestResult) -> None:
    result.processed += stored.processed
    result.messages_created += stored.messages_created
    result.duplicates += stored.duplicates
    result.statuses_applied += stored.statuses_applied
    result.changes += stored.changes


def _store(conn: Connection, tenant: TenantId, parsed: list[tuple[Any, Delivery]],
           policy: IngestPolicy) -> IngestResult:
    """Apply parsed events set-wise and mark them processed; returns what was stored."""
    stored = IngestResult()
    pending: list[_Pending] = []
    first_of: dict[tuple[uuid.UUID, str], int] = {}  # (inbox, external id) -> its place in `pending`
    for row, delivery in parsed:
        for item in _pending(row, delivery, policy):
            key = (row.inbox_id, item.message.external_id)
            if item.message.edited:
                if _apply_edit(conn, tenant, row.inbox_id, item.message):
                    stored.duplicates += 1
                    continue
                if key in first_of:  # the message it edits arrived in this same batch
                    pending[first_of[key]] = _with_edit(pending[first_of[key]], item.message)
                    stored.duplicates += 1
                    continue
            first_of.setdefault(key, len(pending))
            pending.append(item)
        for status in delivery.statuses:
            applied = apply_status(conn, tenant, row.inbox_id, status)
            stored.statuses_applied += len(applied)
            stored.changes += applied
        stored.processed.append(row.id)
    if pending:  # the insert marks the batch's events processed
        created = store_inbound_many(conn, tenant, pending, feed=stored.changes, processed=stored.processed)
        stored.messages_created.extend(created)
        stored.duplicates += len(pending) - len(created)
    else:
        direct.run(conn, MARK_PROCESSED, {"t": tenant, "ids": batch.uuids(stored.processed)})
    return stored


def _senders_and_threads(
    conn: Connection, tenant: TenantId, pending: list[_Pending], feed: list[Change] | None,
    opened: dict[uuid.UUID, Change] | None,
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    people = []
    for p in pending:
        identities = [normalize.identity(i, p.region) for i in p.message.identities]
        people.append((identities, normalize.display_name(p.message.sender_name, *(v for _, v in identities))))
    contacts = resolve_contacts(conn, tenant, people, feed=feed)
    threads = find_or_open_many(conn, tenant, [
        ThreadRequest(p.inbox_id, contact, p.message.sent_at, p.reopen_window,
                      (*(r for r in [p.message.in_reply_to] if r), *p.message.references)
                      if p.message.kind == "email" else (), p.message.subject)
        for p, contact in zip(pending, contacts, strict=True)
    ], opened=opened)
    return contacts, threads


def _with_edit(original: _Pending, edit: InboundMessage) -> _Pending:
    """A message not stored yet, as its edit left it (what `_apply_edit` does to a stored one)."""
    metadata = {**original.message.metadata, "edited": True, "edited_at": edit.sent_at.isoformat()}
    return replace(original, message=original.message.model_copy(update={"text": edit.text, "metadata": metadata}))


def _apply_edit(conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, message: InboundMessage) -> bool:
    content, _, _ = _content(message)
    edited = direct.first(conn, APPLY_EDIT, {"t": tenant, "inbox": inbox_id, "external_id": message.external_id,
                                             "content": content, "at": message.sent_at.isoformat()})
    return edited is not None


def store_inbound_many(conn: Connection, tenant: TenantId, pending: list[_Pending], *,
                       feed: list[Change] | None = None, processed: Sequence[uuid.UUID] = ()) -> list[uuid.UUID]:
    """Store a batch of inbound messages; returns the ids of those not stored before.

    With `feed`, the change events of what it created are appended to it: contacts, then conversations (as
    the batch left them), then messages. The events `processed` are marked so by the insert's statement.
    """
    opened: dict[uuid.UUID, Change] | None = None if feed is None else {}
    contacts, threads = _senders_and_threads(conn, tenant, pending, feed, opened)
    records: list[dict[str, Any]] = []
    for p, contact, conversation in zip(pending, contacts, threads, strict=True):
        message = p.message
        content, html, quoted = _content(message)
        metadata = dict(message.metadata)
        if message.headers:
            metadata["headers"] = message.headers
        if message.recipients:
            metadata["recipients"] = list(message.recipients)
        if message.in_reply_to:
            metadata["in_reply_to"] = message.in_reply_to
        records.append({
            "inbox": p.inbox_id, "conversation": conversation, "contact": contact, "event": p.event_id,
            "kind": message.kind, "external_id": message.external_id, "rfc_id": message.rfc_message_id,
            "subject": message.subject, "content": content, "html": html, "quoted": quoted,
            "attachments": [a.model_dump(exclude_none=True) for a in message.attachments],
            "metadata": metadata, "sent_at": message.sent_at, "received_at": p.received_at,
        })
    inserted = direct.rows(conn, INSERT_MESSAGES, {"t": tenant, "rows": batch.rows(records),
                                                   "processed": batch.uuids(processed)})
    counted: list[Any] = []
    if inserted:
        counters = _counters(inserted)
        counted = direct.rows(conn, COUNT_MESSAGES, {"t": tenant, "ids": batch.uuids(c["id"] for c in counters),
                                                     "rows": batch.rows(counters)})
        # Conversations this batch opened or reopened start their SLA clock at their first new message
        # (never later than now: a sender's clock may run ahead).
        now = datetime.now(UTC)
        firsts = {c["id"]: c["first_at"] for c in counters}
        sla.start_clocks(conn, tenant, [(row.id, min(firsts[row.id], now), row.priority)
                                        for row in counted if row.unstarted])
    if feed is not None and opened is not None:
        _tell(feed, opened, counted, inserted)
    return [uuid.UUID(str(row.id)) for row in inserted]


def _tell(feed: list[Change], opened: dict[uuid.UUID, Change], counted: Sequence[Any],
          inserted: Sequence[Any]) -> None:
    """The events of a stored batch: each conversation it opened or reopened as the batch left it (the
    counters' statement returns the row), then each message it inserted."""
    after = {row.id: row for row in counted}
    for conversation_id, change in opened.items():
        row = after.get(conversation_id)
        feed.append(change if row is None else replace(change, data={"conversation": changes.conversation(row)}))
    feed.extend(Change("message.received", {"message": changes.message(row)}, conversation_id=row.conversation_id,
                       subject_id=row.id) for row in inserted)


def _counters(inserted: Sequence[Any]) -> list[dict[str, Any]]:
    """Per conversation: how many messages were added, their first and last times, the first subject."""
    totals: dict[uuid.UUID, dict[str, Any]] = {}
    for row in sorted(inserted, key=lambda r: r.sent_at):
        entry = totals.setdefault(row.conversation_id, {"id": row.conversation_id, "total": 0,
                                                        "first_at": row.sent_at, "subject": None})
        entry["total"] += 1
        entry["last_at"] = row.sent_at
        entry["subject"] = entry["subject"] or row.subject
    return [totals[i] for i in sorted(totals)]  # a fixed order, so concurrent batches lock conversations alike


def _content(message: InboundMessage) -> tuple[str, str | None, str | None]:
    """(the text people read, the original HTML, the quoted history of an email)."""
    if message.kind != "email":
        return message.text, message.html, None
    body = message.text or (normalize.html_to_text(message.html) if message.html else "")
    reply, quoted = normalize.split_reply(body, message.stripped_reply)
    return reply, message.html, quoted


def apply_status(conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, status: StatusUpdate) -> list[Change]:
    """A provider's delivery status, forward only; kept when its message is not known yet (pipelines.outbound)."""
    return statuses.apply_status(conn, tenant, inbox_id, status.external_id, status.status, status.at, status.error)
