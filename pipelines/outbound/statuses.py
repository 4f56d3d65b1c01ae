"""Delivery statuses of outbound messages: forward only, never lost to a race, each one in the change feed.

A status moves a message forward along queued -> sent -> delivered -> read; `failed` ranks with `delivered`,
so a late "failed" after "delivered" (or the reverse) changes nothing, and neither does a status that is not
ahead of the message's own. A status whose message has no row with that provider id yet (the provider's
callback overtook our commit of the id it gave us, while the reply is claimed) is kept in `early_statuses`
and applied by `apply_early` when the id is recorded.

Both sides take one transaction-level advisory lock per (inbox, provider id) before they look at the other's
rows, so a callback and the commit of its id cannot miss each other: whichever comes second sees the first.

Every applied status returns a `message.status_updated` change; the caller records the transaction's changes
as its last statement (pipelines.changes).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from db import direct
from db.tenancy import TenantId
from pipelines.changes import Change

RANK = ("CASE {col} WHEN 'queued' THEN 1 WHEN 'sent' THEN 2 WHEN 'failed' THEN 3 WHEN 'delivered' THEN 3 "
        "WHEN 'read' THEN 4 ELSE 0 END")
MESSAGE_COLUMNS = ("id, conversation_id, contact_id, inbox_id, direction, kind, external_id, subject, content, "
                   "status, status_error, status_updated_at, sent_at, received_at")
APPLY_STATUS = text(f"""
UPDATE messages SET status = :status, status_error = COALESCE(:error, status_error), status_updated_at = :at
WHERE tenant_id = :t AND inbox_id = :inbox AND external_id = :external_id AND direction = 'outbound'
  AND {RANK.format(col='CAST(:status AS text)')} > {RANK.format(col='status')}
RETURNING {MESSAGE_COLUMNS}
""")
LOCK_KEY = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
# Kept only while a reply of the inbox is in flight (claimed, its id not recorded yet): a status can overtake
# only such a reply. Statuses of messages that are not ours (WhatsApp reports every message its number sends,
# whatever sent it) are not kept; the inbox's kept statuses older than a day go on the way (a reply's id is
# recorded within its job's time limit, or never).
KEEP_EARLY = text("""
WITH stale AS (
    DELETE FROM early_statuses WHERE id IN (
        SELECT id FROM early_statuses
        WHERE tenant_id = :t AND inbox_id = :inbox AND created_at < now() - interval '1 day' LIMIT 100)
)
INSERT INTO early_statuses (tenant_id, inbox_id, external_id, status, error, at)
SELECT :t, :inbox, :external_id, :status, :error, :at
WHERE NOT EXISTS (SELECT 1 FROM messages WHERE tenant_id = :t AND inbox_id = :inbox AND external_id = :external_id)
  AND EXISTS (SELECT 1 FROM messages WHERE tenant_id = :t AND inbox_id = :inbox AND send_claimed_at IS NOT NULL)
ON CONFLICT (tenant_id, inbox_id, external_id, status) DO NOTHING
""")
TAKE_EARLY = text(f"""
DELETE FROM early_statuses WHERE tenant_id = :t AND inbox_id = :inbox AND external_id = :external_id
RETURNING status, error, at, {RANK.format(col='status')} AS rank
""")


def lock(conn: Connection, inbox_id: uuid.UUID, external_id: str) -> None:
    """Serialize a status and the commit of its message's provider id (see the module docstring)."""
    direct.run(conn, LOCK_KEY, {"key": f"intake.status:{inbox_id}:{external_id}"})


def apply_status(conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, external_id: str, status: str,
                 at: datetime, error: str | None = None) -> list[Change]:
    """Apply one provider status; keep it when its message is not known yet. Returns the change it made."""
    params = {"t": tenant, "inbox": inbox_id, "external_id": external_id, "status": status, "error": error,
              "at": at}
    row = direct.first(conn, APPLY_STATUS, params)
    if row is None:
        lock(conn, inbox_id, external_id)
        # Again under the lock (a new statement, a new snapshot): the id may have been committed meanwhile.
        row = direct.first(conn, APPLY_STATUS, params)
        if row is None:
            direct.run(conn, KEEP_EARLY, params)
            return []
    return [status_change(row)]


def apply_early(conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, external_id: str) -> list[Change]:
    """Apply the statuses kept for `external_id`, in their order; the caller holds `lock` for it."""
    kept = direct.rows(conn, TAKE_EARLY, {"t": tenant, "inbox": inbox_id, "external_id": external_id})
    applied: list[Change] = []
    for early in sorted(kept, key=lambda r: (r.rank, r.at)):
        row = direct.first(conn, APPLY_STATUS, {"t": tenant, "inbox": inbox_id, "external_id": external_id,
                                                "status": early.status, "error": early.error, "at": early.at})
        if row is not None:
            applied.append(status_change(row))
    return applied


def status_change(row: Any) -> Change:
    view = message_view(row)
    return Change("message.status_updated",
                  {"message": view, "status": {"status": row.status, "error": row.status_error,
                                               "at": _time(row.status_updated_at)}},
                  conversation_id=row.conversation_id, subject_id=row.id)


def message_view(row: Any) -> dict[str, Any]:
    """A message as the admin API shows it: ids as strings, times in RFC 3339."""
    return {
        "id": str(row.id), "conversation_id": _str(row.conversation_id), "contact_id": _str(row.contact_id),
        "inbox_id": str(row.inbox_id), "direction": row.direction, "kind": row.kind,
        "external_id": row.external_id, "subject": row.subject, "content": row.content, "status": row.status,
        "sent_at": _time(row.sent_at), "received_at": _time(row.received_at),
    }


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
