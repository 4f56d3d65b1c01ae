"""Threading: which conversation a new message belongs to.

Email replies follow In-Reply-To and References to the conversation holding the referenced Message-ID
(same tenant and inbox only). Otherwise a contact has at most one open conversation per inbox (a partial
unique index): a message joins it, or reopens the latest resolved one within the inbox's reopen window,
or starts a new one. Creation is an upsert on that index, so concurrent workers agree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from db.tenancy import TenantId

BY_REFERENCE = text("""
SELECT conversation_id FROM messages
WHERE tenant_id = :t AND inbox_id = :inbox AND rfc_message_id = ANY(:refs) AND conversation_id IS NOT NULL
ORDER BY sent_at DESC LIMIT 1
""")
OPEN = text("""
SELECT id FROM conversations WHERE tenant_id = :t AND inbox_id = :inbox AND contact_id = :contact AND status = 'open'
""")
REOPEN = text("""
UPDATE conversations SET status = 'open', resolved_at = NULL, updated_at = now()
WHERE id = (SELECT id FROM conversations
            WHERE tenant_id = :t AND inbox_id = :inbox AND contact_id = :contact AND status = 'resolved'
              AND resolved_at >= :since
            ORDER BY resolved_at DESC LIMIT 1)
RETURNING id
""")
CREATE = text("""
INSERT INTO conversations (tenant_id, inbox_id, contact_id, subject) VALUES (:t, :inbox, :contact, :subject)
ON CONFLICT (tenant_id, inbox_id, contact_id) WHERE status = 'open' DO NOTHING
RETURNING id
""")


def find_or_open(
    conn: Connection, tenant: TenantId, inbox_id: uuid.UUID, contact_id: uuid.UUID, *,
    sent_at: datetime, reopen_window: timedelta, references: Sequence[str] = (), subject: str | None = None,
) -> uuid.UUID:
    if references:
        found = conn.execute(BY_REFERENCE, {"t": tenant, "inbox": inbox_id, "refs": list(references)}).scalar()
        if found is not None:
            return uuid.UUID(str(found))
    params = {"t": tenant, "inbox": inbox_id, "contact": contact_id}
    for _ in range(3):
        current = conn.execute(OPEN, params).scalar()
        if current is not None:
            return uuid.UUID(str(current))
        if reopen_window > timedelta(0):
            savepoint = conn.begin_nested()
            try:
                reopened = conn.execute(REOPEN, {**params, "since": sent_at - reopen_window}).scalar()
                savepoint.commit()
            except IntegrityError:  # another worker opened one meanwhile
                savepoint.rollback()
                continue
            if reopened is not None:
                return uuid.UUID(str(reopened))
        created = conn.execute(CREATE, {**params, "subject": subject}).scalar()
        if created is not None:
            return uuid.UUID(str(created))
    current = conn.execute(OPEN, params).scalar_one()
    return uuid.UUID(str(current))
