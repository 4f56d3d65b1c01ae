"""Threading: which conversation a new message belongs to.

Email replies follow In-Reply-To and References to the conversation holding the referenced Message-ID,
in the same tenant and inbox, and only when the sender takes part in it: its contact wrote in it, or one of
the sender's addresses was among the recipients of a message in it. A Message-ID is no secret (anyone on a
thread or a mailing list sees it), so a stranger who quotes one starts a conversation of their own.

Otherwise a contact has at most one open conversation per inbox (a partial unique index): a message joins
it, or reopens the latest resolved one within the inbox's reopen window, or starts a new one. Creation is
an upsert on that index, so concurrent workers agree.

The batch path reports the conversations it opened or reopened (`opened`) with the row each statement
returned, for the caller's `conversation.opened` / `conversation.reopened` events.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from db import batch, direct
from db.tenancy import TenantId
from pipelines.changes import CONVERSATION_COLUMNS, Change, columns, conversation

BY_REFERENCE = text("""
SELECT m.conversation_id FROM messages m
WHERE m.tenant_id = :t AND m.inbox_id = :inbox AND m.rfc_message_id = ANY(:refs) AND m.conversation_id IS NOT NULL
  AND (EXISTS (SELECT 1 FROM conversations c
               WHERE c.tenant_id = :t AND c.id = m.conversation_id AND c.contact_id = :contact)
       OR EXISTS (SELECT 1 FROM messages p
                  WHERE p.tenant_id = :t AND p.conversation_id = m.conversation_id AND p.contact_id = :contact)
       OR EXISTS (SELECT 1 FROM messages p
                  CROSS JOIN LATERAL jsonb_array_elements_text(
                      CASE WHEN jsonb_typeof(p.metadata -> 'recipients') = 'array'
                           THEN p.metadata -> 'recipients' ELSE CAST('[]' AS jsonb) END) AS r(address)
                  JOIN contact_identities i
                    ON i.tenant_id = :t AND i.contact_id = :contact AND i.kind = 'email'
                   AND i.value = lower(r.address)
                  WHERE p.tenant_id = :t AND p.conversation_id = m.conversation_id))
ORDER BY m.sent_at DESC LIMIT 1
""")
# The open conversation, and the latest one resolved within the reopen window, in one round trip.
CANDIDATES = text("""
SELECT (SELECT id FROM conversations
        WHERE tenant_id = :t AND inbox_id = :inbox AND contact_id = :contact AND status = 'open') AS open_id,
       (SELECT id FROM conversations
        WHERE tenant_id = :t AND inbox_id = :inbox AND contact_id = :contact AND status = 'resolved'
          AND resolved_at >= CAST(:since AS timestamptz)
        ORDER BY resolved_at DESC LIMIT 1) AS reopen_id
""")
# A reopened conversation starts a new SLA period: its clock starts again with the message that reopens it.
REOPEN = text(f"""
UPDATE conversations SET status = 'open', resolved_at = NULL, updated_at = now(), sla_started_at = NULL,
       first_response_due_at = NULL, resolution_due_at = NULL, sla_breached_at = NULL
WHERE id = :id AND status = 'resolved'
RETURNING id, {columns(CONVERSATION_COLUMNS, "conversations")}
""")
CREATE = text(f"""
INSERT INTO conversations (tenant_id, inbox_id, contact_id, subject) VALUES (:t, :inbox, :contact, :subject)
ON CONFLICT (tenant_id, inbox_id, contact_id) WHERE status = 'open' DO NOTHING
RETURNING id, {columns(CONVERSATION_COLUMNS, "conversations")}
""")


# One index probe per pair: LIMIT keeps each LATERAL subquery a probe (a pair has one open conversation at
# most), where the planner would otherwise join all of the tenant's conversations to json_to_recordset's
# guess of 100 rows with a hash.
OPEN_MANY = text("""
SELECT u.inbox_id, u.contact_id, o.id
FROM json_to_recordset(CAST(:pairs AS json)) AS u(inbox_id uuid, contact_id uuid)
CROSS JOIN LATERAL (SELECT id FROM conversations c
                    WHERE c.tenant_id = :t AND c.inbox_id = u.inbox_id AND c.contact_id = u.contact_id
                      AND c.status = 'open' LIMIT 1) o
""")
# Of the pairs with no open conversation, those with a resolved one inside their reopen window.
REOPENABLE_MANY = text("""
SELECT u.inbox_id, u.contact_id
FROM json_to_recordset(CAST(:pairs AS json)) AS u(inbox_id uuid, contact_id uuid, since timestamptz)
CROSS JOIN LATERAL (SELECT 1 FROM conversations c
                    WHERE c.tenant_id = :t AND c.inbox_id = u.inbox_id AND c.contact_id = u.contact_id
                      AND c.status = 'resolved' AND c.resolved_at >= u.since LIMIT 1) r
""")
# New conversations for a batch, claimed in the caller's (global) order; a pair another worker opened
# meanwhile returns nothing and takes the careful path.
CREATE_MANY = text(f"""
INSERT INTO conversations AS c (tenant_id, inbox_id, contact_id, subject)
SELECT :t, inbox_id, contact_id, subject
FROM json_to_recordset(CAST(:pairs AS json)) AS u(inbox_id uuid, contact_id uuid, subject text)
ON CONFLICT (tenant_id, inbox_id, contact_id) WHERE status = 'open' DO NOTHING
RETURNING c.id, c.inbox_id, c.contact_id, {columns(CONVERSATION_COLUMNS, "c")}
""")


@dataclass(frozen=True)
class ThreadRequest:
    inbox_id: uuid.UUID
    contact_id: uuid.UUID
    sent_at: datetime
    reopen_window: timedelta
    references: tuple[str, ...] = ()
    subject: str | None = None


def find_or_open_many(conn: Connection, tenant: TenantId, requests: Sequence[ThreadRequest], *,
                      opened: dict[uuid.UUID, Change] | None = None) -> list[uuid.UUID]:
    """`find_or_open` for a batch: one look-up of the open conversations, one insert of the new ones, and
    the careful path for the rest (email references, reopens, races). Each conversation opened or reopened
    goes into `opened` with its event."""
    plain = sorted({(r.inbox_id, r.contact_id) for r in requests if not r.references})
    open_now: dict[tuple[uuid.UUID, uuid.UUID], uuid.UUID] = {}
    if plain:
        rows = direct.rows(conn, OPEN_MANY, {"t": tenant, "pairs": batch.rows(
            {"inbox_id": i, "contact_id": c} for i, c in plain)})
        open_now = {(row.inbox_id, row.contact_id): row.id for row in rows}
        open_now.update(_open_new(conn, tenant, requests, open_now, opened))
    result: dict[int, uuid.UUID] = {}
    # New conversations are claimed in one global order, so concurrent batches cannot deadlock.
    for index in sorted(range(len(requests)), key=lambda i: _claim_order(requests[i].inbox_id, requests[i].contact_id)):
        r = requests[index]
        key = (r.inbox_id, r.contact_id)
        found = None if r.references else open_now.get(key)
        if found is None:
            found = find_or_open(conn, tenant, r.inbox_id, r.contact_id, sent_at=r.sent_at,
                                 reopen_window=r.reopen_window, references=r.references, subject=r.subject,
                                 opened=opened)
            if not r.references:
                open_now[key] = found
        result[index] = found
    return [result[i] for i in range(len(requests))]


def _claim_order(inbox_id: uuid.UUID, contact_id: uuid.UUID) -> tuple[str, str]:
    return str(inbox_id), str(contact_id)


def _open_new(conn: Connection, tenant: TenantId, requests: Sequence[ThreadRequest],
              open_now: dict[tuple[uuid.UUID, uuid.UUID], uuid.UUID], opened: dict[uuid.UUID, Change] | None,
              ) -> dict[tuple[uuid.UUID, uuid.UUID], uuid.UUID]:
    """Open, in one statement, a conversation for every plain pair that has none and nothing to reopen."""
    first: dict[tuple[uuid.UUID, uuid.UUID], ThreadRequest] = {}
    for r in requests:
        if not r.references and (r.inbox_id, r.contact_id) not in open_now:
            first.setdefault((r.inbox_id, r.contact_id), r)
    if not first:
        return {}
    pairs = sorted(first, key=lambda pair: _claim_order(*pair))
    sinces = batch.rows({"inbox_id": i, "contact_id": c,
                         "since": first[i, c].sent_at - first[i, c].reopen_window
                         if first[i, c].reopen_window > timedelta(0) else None} for i, c in pairs)
    reopenable = {(row.inbox_id, row.contact_id)
                  for row in direct.rows(conn, REOPENABLE_MANY, {"t": tenant, "pairs": sinces})}
    pairs = [p for p in pairs if p not in reopenable]
    if not pairs:
        return {}
    rows = direct.rows(conn, CREATE_MANY, {"t": tenant, "pairs": batch.rows(
        {"inbox_id": i, "contact_id": c, "subject": first[i, c].subject} for i, c in pairs)})
    if opened is not None:
        opened.update((row.id, _event("conversation.opened", row)) for row in rows)
    return {(row.inbox_id, row.contact_id): row.id for row in rows}


def find_or_open(
    conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, contact_id: uuid.UUID, *,
    sent_at: datetime, reopen_window: timedelta, references: Sequence[str] = (), subject: str | None = None,
    opened: dict[uuid.UUID, Change] | None = None,
) -> uuid.UUID:
    if references:
        found = conn.execute(BY_REFERENCE, {"t": tenant, "inbox": inbox_id, "contact": contact_id,
                                            "refs": list(references)}).scalar()
        if found is not None:
            return uuid.UUID(str(found))
    params = {"t": tenant, "inbox": inbox_id, "contact": contact_id}
    since = sent_at - reopen_window if reopen_window > timedelta(0) else None
    for _ in range(3):
        current = conn.execute(CANDIDATES, {**params, "since": since}).one()
        if current.open_id is not None:
            return uuid.UUID(str(current.open_id))
        if current.reopen_id is not None:
            try:
                with direct.savepoint(conn):
                    reopened = conn.execute(REOPEN, {"id": current.reopen_id}).first()
            except IntegrityError:  # another worker opened one meanwhile
                continue
            if reopened is not None:
                return _opened(reopened, "conversation.reopened", opened)
            continue
        created = conn.execute(CREATE, {**params, "subject": subject}).first()
        if created is not None:
            return _opened(created, "conversation.opened", opened)
    current = conn.execute(CANDIDATES, {**params, "since": None}).one()
    return uuid.UUID(str(current.open_id))


def _event(kind: str, row: Any) -> Change:
    return Change(kind, {"conversation": conversation(row)}, conversation_id=row.id, subject_id=row.id)


def _opened(row: Any, kind: str, opened: dict[uuid.UUID, Change] | None) -> uuid.UUID:
    conversation_id = uuid.UUID(str(row.id))
    if opened is not None:
        opened[conversation_id] = _event(kind, row)
    return conversation_id
