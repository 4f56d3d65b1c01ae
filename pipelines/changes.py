"""The change feed's writing side: every change the fleet makes, recorded in the transaction that makes it.

    changes.record(conn, tenant, [Change("message.received", {"message": {...}}, conversation_id=c, subject_id=m)])

`record` numbers the changes after the tenant's last event and inserts them in one statement
(`intake_record_changes`, migration 0015), which also notifies `intake_changes` at commit. It holds the
tenant's feed head locked until the transaction ends, so that numbers are handed out in commit order: call it
as the transaction's *last* statement, after every other row it changes is written (a transaction that took
the head first and another row lock later could wait on a writer that waits on the head). Record all of a
transaction's changes in one call where the code allows: one round trip, one notification.

`data` is the changed row as the admin API shows it (ids as strings, times in RFC 3339): a subscriber that
reads the event needs no second request. Events never carry secrets. An erasure redacts the person from
stored events (`subject_id` finds the events about a contact's messages), and `contact.erased` names ids only.

The reading side is `read` (the poll API, the stream and `intake changes` all page through it), `redact` (an
erasure) and `RETIRE` (retention, by the clock). The `*_COLUMNS` constants are what a statement that changes a
row puts in its RETURNING clause so that the event is built from the row it already has, with no second read.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, text

from db import batch, direct
from db.tenancy import TenantId

# Every type the fleet records; a subscriber's filter names some of them.
TYPES = (
    "message.received", "message.classified", "draft.created", "message.sent", "message.status_updated",
    "conversation.opened", "conversation.resolved", "conversation.reopened", "conversation.assigned",
    "contact.created", "contact.merged", "contact.erased", "sla.breached", "budget.alert",
)

RECORD = text("SELECT intake_record_changes(:t, CAST(:changes AS json)) AS last_seq")
# A page of the feed after a seq, in seq order (the primary key's order), of some types or all.
READ = text("""
SELECT seq, id, type, created_at, data FROM change_events
WHERE tenant_id = :t AND seq > :after AND (CAST(:types AS text[]) IS NULL OR type = ANY(CAST(:types AS text[])))
ORDER BY seq LIMIT :n
""")
# The rows as the API shows them: what a RETURNING clause names (with the table's alias) to build an event.
MESSAGE_FIELDS = ("id", "conversation_id", "contact_id", "inbox_id", "direction", "kind", "external_id", "subject",
                  "content", "status", "sent_at", "received_at")
CONVERSATION_FIELDS = ("id", "inbox_id", "contact_id", "status", "subject", "awaiting_reply", "category", "priority",
                       "last_message_at")
MESSAGE_COLUMNS = ", ".join(f"{{alias}}.{name} AS m_{name}" for name in MESSAGE_FIELDS)
CONVERSATION_COLUMNS = ", ".join(f"{{alias}}.{name} AS c_{name}" for name in CONVERSATION_FIELDS)
ERASED = '{"erased": true}'
# Events about the person's contacts and messages keep their place in the feed, and nothing else.
BLANK = text(f"""
UPDATE change_events SET data = '{ERASED}'
WHERE tenant_id = :t AND subject_id = ANY(CAST(:subjects AS uuid[])) AND data <> '{ERASED}'
  AND type <> 'contact.erased'
""")
# A conversation's subject is the person's words when the conversation is theirs.
FORGET_SUBJECTS = text("""
UPDATE change_events SET data = jsonb_set(data, '{conversation,subject}', 'null')
WHERE tenant_id = :t AND conversation_id = ANY(CAST(:conversations AS uuid[]))
  AND jsonb_typeof(data -> 'conversation' -> 'subject') = 'string'
""")
# Other events that name the person somewhere in their data (a merge, another message quoting them).
NAMING = text("""
SELECT seq, data FROM change_events
WHERE tenant_id = :t
  AND EXISTS (SELECT 1 FROM unnest(CAST(:needles AS text[])) n WHERE strpos(lower(data::text), n) > 0)
""")
REWRITE = text("UPDATE change_events SET data = CAST(:data AS jsonb) WHERE tenant_id = :t AND seq = :seq")
NAMES = text("SELECT display_name FROM contacts WHERE tenant_id = :t AND id = ANY(CAST(:ids AS uuid[])) "
             "AND display_name IS NOT NULL")
# Retention: the tenant's oldest events, a batch at a time, by the clock (`pipelines.lifecycle.retention`).
RETIRE = """
DELETE FROM change_events WHERE tenant_id = :t AND seq IN (
    SELECT seq FROM change_events WHERE tenant_id = :t AND created_at < :cutoff ORDER BY seq LIMIT :limit)
"""
REDACTED = "[erased]"


@dataclass(frozen=True)
class Change:
    """One event: its type, the changed row as the API shows it, and what orders and finds it."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    conversation_id: uuid.UUID | None = None  # events of one conversation are delivered in seq order
    subject_id: uuid.UUID | None = None  # the row the event is about (a message, a contact, a draft)

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown change type {self.type!r}")


def record(conn: Connection, tenant: TenantId, changes: Sequence[Change]) -> int | None:
    """Append `changes` to the tenant's feed in the open transaction; returns the last seq (None: nothing)."""
    if not changes:
        return None
    payload = batch.rows({"type": c.type, "data": c.data, "conversation_id": c.conversation_id,
                          "subject_id": c.subject_id} for c in changes)
    row = direct.first(conn, RECORD, {"t": tenant, "changes": payload})
    return None if row is None else int(row.last_seq)


@dataclass(frozen=True)
class Item:
    """One event as a reader sees it."""

    seq: int
    id: uuid.UUID
    type: str
    created_at: datetime
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": str(self.id), "type": self.type, "created_at": self.created_at.isoformat(),
                "data": self.data}


def read(conn: Connection, tenant: TenantId, *, after: int = 0, limit: int = 100,
         types: Sequence[str] | None = None) -> list[Item]:
    """Up to `limit` of the tenant's events after seq `after`, oldest first, of `types` (None: all)."""
    rows = direct.rows(conn, READ, {"t": tenant, "after": after, "n": limit,
                                    "types": None if not types else list(types)})
    return [Item(int(r.seq), uuid.UUID(str(r.id)), r.type, r.created_at, r.data) for r in rows]


def parse_types(value: str | None) -> list[str] | None:
    """`a,b` as a list of known types (None: every type); an unknown one is a ValueError naming it."""
    if value is None or not value.strip():
        return None
    wanted = [t.strip() for t in value.split(",") if t.strip()]
    for name in wanted:
        if name not in TYPES:
            shown = name if name.isprintable() and len(name) <= 40 else repr(name[:40])
            raise ValueError(f"unknown event type {shown}: use some of {', '.join(TYPES)}")
    return sorted(set(wanted))


def picked(row: Any, prefix: str, names: Sequence[str]) -> dict[str, Any]:
    """The fields `names` of a row that a RETURNING clause gave as `<prefix><name>` (MESSAGE_COLUMNS' m_)."""
    return {name: getattr(row, prefix + name) for name in names}


def message(row: Any) -> dict[str, Any]:
    return picked(row, "m_", MESSAGE_FIELDS)


def conversation(row: Any) -> dict[str, Any]:
    return picked(row, "c_", CONVERSATION_FIELDS)


def columns(template: str, alias: str) -> str:
    """MESSAGE_COLUMNS or CONVERSATION_COLUMNS for a table named `alias` in the statement."""
    return template.format(alias=alias)


def redact(conn: Connection, tenant: TenantId, contact_ids: Sequence[uuid.UUID], message_ids: Sequence[uuid.UUID],
           needles: Sequence[str], *, conversation_ids: Sequence[uuid.UUID] = ()) -> int:
    """Remove a person from the tenant's stored events; how many events changed.

    Events about their contacts and messages (by `subject_id`) keep their seq, type and id, and their data
    becomes `{"erased": true}`; their conversations' subjects become null; any other event whose data names
    one of `needles` (identities, lower-cased) or the contacts' names gets "[erased]" in its place. Run it
    before the contacts' names are blanked. A second run changes nothing.
    """
    names = [str(r.display_name) for r in direct.rows(conn, NAMES, {"t": tenant, "ids": batch.uuids(contact_ids)})]
    changed = direct.run(conn, BLANK, {"t": tenant, "subjects": batch.uuids([*contact_ids, *message_ids])})
    if conversation_ids:
        changed += direct.run(conn, FORGET_SUBJECTS, {"t": tenant, "conversations": batch.uuids(conversation_ids)})
    words = sorted({w.lower() for w in (*needles, *names) if w and w.strip()}, key=len, reverse=True)
    if not words:
        return changed
    for row in direct.rows(conn, NAMING, {"t": tenant, "needles": words}):
        data = _without(row.data, words)
        if data != row.data:
            direct.run(conn, REWRITE, {"t": tenant, "seq": row.seq, "data": orjson.dumps(data).decode()})
            changed += 1
    return changed


def _without(value: Any, words: Sequence[str]) -> Any:
    """`value` with every string's occurrences of `words` (any case) replaced by "[erased]"."""
    if isinstance(value, str):
        lowered = value.lower()
        for word in words:
            start = lowered.find(word)
            while start >= 0:
                value = value[:start] + REDACTED + value[start + len(word):]
                lowered = lowered[:start] + REDACTED + lowered[start + len(word):]
                start = lowered.find(word, start + len(REDACTED))
        return value
    if isinstance(value, dict):
        return {k: _without(v, words) for k, v in value.items()}
    if isinstance(value, list):
        return [_without(v, words) for v in value]
    return value
