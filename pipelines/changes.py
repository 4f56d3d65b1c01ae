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
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
