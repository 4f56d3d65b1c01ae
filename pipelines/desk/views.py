"""Conversations, their messages and drafts, read as the admin API shows them.

Listings page by cursor, not offset: a conversation list runs newest activity first (`updated_at`, which
every change to a conversation moves) and new activity keeps arriving, so an offset would skip or repeat
rows. The cursor names the last row of a page (its time and id, base64url); the next page starts after it.
A conversation that changes while a client pages moves to the top, where `updated_since` finds it again.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines.control.errors import Invalid, NotFound
from pipelines.desk.models import (
    ClassificationView,
    ConversationDetail,
    ConversationPage,
    ConversationQuery,
    ConversationView,
    CorrectionView,
    DraftView,
    MessagePage,
    MessageQuery,
    MessageView,
)

# The period's first reply, and whether each due time passed unmet (as the clock in pipelines.lifecycle.sla
# judges it: a reply sent after the period's start and by the first-response due time meets it).
CONVERSATION_COLUMNS = """
c.id, c.tenant_id, c.inbox_id, c.contact_id, c.status, c.subject, c.awaiting_reply, c.assignee, c.team_id,
c.category, c.priority, c.message_count, c.inbound_count, c.first_message_at, c.last_message_at,
c.first_response_at, c.resolved_at, c.created_at, c.updated_at, c.sla_started_at, c.first_response_due_at,
c.resolution_due_at, c.sla_breached_at,
(SELECT min(m.sent_at) FROM messages m
 WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id AND m.direction = 'outbound'
   AND m.sent_at >= c.sla_started_at) AS responded_at
"""
LIST_CONVERSATIONS = text(f"""
SELECT {CONVERSATION_COLUMNS}
FROM conversations c
WHERE c.tenant_id = :t
  AND (CAST(:status AS text) IS NULL OR c.status = :status)
  AND (CAST(:inbox AS uuid) IS NULL OR c.inbox_id = :inbox)
  AND (CAST(:assignee AS text) IS NULL OR c.assignee = :assignee)
  AND (CAST(:since AS timestamptz) IS NULL OR c.updated_at >= :since)
  AND (CAST(:after_at AS timestamptz) IS NULL OR (c.updated_at, c.id) < (:after_at, :after_id))
ORDER BY c.updated_at DESC, c.id DESC
LIMIT :limit
""")
ONE_CONVERSATION = text(f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.tenant_id = :t AND c.id = :id")
LATEST_CLASSIFICATION = text("""
SELECT a.message_id, a.category, a.priority, a.sentiment, a.language, a.confidence, a.provider, a.model,
       a.created_at
FROM ai_classifications a JOIN messages m ON m.tenant_id = a.tenant_id AND m.id = a.message_id
WHERE a.tenant_id = :t AND m.conversation_id = :id
ORDER BY a.created_at DESC, a.id DESC LIMIT 1
""")
LATEST_CORRECTION = text("""
SELECT k.message_id, k.category, k.priority, k.actor, k.actor_key_id, k.created_at, k.updated_at
FROM ai_corrections k JOIN messages m ON m.tenant_id = k.tenant_id AND m.id = k.message_id
WHERE k.tenant_id = :t AND m.conversation_id = :id
ORDER BY k.updated_at DESC, k.id DESC LIMIT 1
""")
MESSAGE_COLUMNS = """
m.id, m.conversation_id, m.contact_id, m.inbox_id, m.direction, m.kind, m.external_id, m.subject, m.content,
m.content_html, m.status, m.status_error, m.sent_at, m.received_at, m.metadata ->> 'author' AS author,
CAST(m.metadata ->> 'draft_id' AS uuid) AS draft_id
"""
LIST_MESSAGES = text(f"""
SELECT {MESSAGE_COLUMNS} FROM messages m
WHERE m.tenant_id = :t AND m.conversation_id = :id
  AND (CAST(:after_at AS timestamptz) IS NULL OR (m.sent_at, m.id) > (:after_at, :after_id))
ORDER BY m.sent_at, m.id
LIMIT :limit
""")
ONE_MESSAGE = text(f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.tenant_id = :t AND m.id = :id")
DRAFT_COLUMNS = """
d.id, d.conversation_id, d.message_id, d.status, d.content, d.confidence, d.language, d.provider, d.model,
d.reply_id, d.edited, d.decided_at, d.decided_by, d.reject_reason, d.created_at, d.updated_at
"""
LIST_DRAFTS = text(f"""
SELECT {DRAFT_COLUMNS} FROM ai_drafts d WHERE d.tenant_id = :t AND d.conversation_id = :id
ORDER BY d.created_at, d.id LIMIT :limit OFFSET :offset
""")
ONE_DRAFT = text(f"SELECT {DRAFT_COLUMNS} FROM ai_drafts d WHERE d.tenant_id = :t AND d.id = :id")


def conversation_view(row: Any, now: datetime | None = None) -> dict[str, Any]:
    """A conversation row as the API shows it, its SLA judged at `now`."""
    now = now or datetime.now(UTC)
    data = dict(row._mapping)
    started, first_due, resolution_due = data.pop("sla_started_at"), data.pop("first_response_due_at"), \
        data.pop("resolution_due_at")
    responded, breached = data.pop("responded_at"), data.pop("sla_breached_at")
    # Judged at now, or at the clock's own breach when it ran ahead (a clock is given its time).
    judged = max(now, breached) if breached is not None else now
    reply_by = responded if responded is not None else judged
    resolved_by = data["resolved_at"] if data["status"] != "open" and data["resolved_at"] else judged
    data["sla"] = {
        "started_at": started, "first_response_due_at": first_due, "resolution_due_at": resolution_due,
        "responded_at": responded, "breached_at": breached,
        "first_response_breached": first_due is not None and reply_by > first_due,
        "resolution_breached": resolution_due is not None and resolved_by > resolution_due,
    }
    return data


def get_conversation(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID) -> ConversationView:
    row = conn.execute(ONE_CONVERSATION, {"t": tenant, "id": conversation_id}).first()
    if row is None:
        raise NotFound(f"no conversation {conversation_id}")
    return ConversationView.model_validate(conversation_view(row))


def show_conversation(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID) -> ConversationDetail:
    view = get_conversation(conn, tenant, conversation_id)
    params = {"t": tenant, "id": conversation_id}
    classification = conn.execute(LATEST_CLASSIFICATION, params).first()
    correction = conn.execute(LATEST_CORRECTION, params).first()
    return ConversationDetail(
        **view.model_dump(),
        classification=None if classification is None else ClassificationView.model_validate(classification._mapping),
        correction=None if correction is None else CorrectionView.model_validate(correction._mapping))


def list_conversations(conn: Connection, tenant: TenantId, query: ConversationQuery) -> ConversationPage:
    after_at, after_id = decode_cursor(query.cursor)
    since = query.updated_since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows = conn.execute(LIST_CONVERSATIONS, {
        "t": tenant, "status": query.status, "inbox": query.inbox_id, "assignee": query.assignee, "since": since,
        "after_at": after_at, "after_id": after_id, "limit": query.limit + 1}).all()
    now = datetime.now(UTC)
    items = [ConversationView.model_validate(conversation_view(r, now)) for r in rows[: query.limit]]
    last = items[-1] if len(rows) > query.limit else None
    return ConversationPage(items=items, next_cursor=None if last is None else encode_cursor(last.updated_at, last.id))


def list_messages(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID,
                  query: MessageQuery) -> MessagePage:
    get_conversation(conn, tenant, conversation_id)
    after_at, after_id = decode_cursor(query.cursor)
    rows = conn.execute(LIST_MESSAGES, {"t": tenant, "id": conversation_id, "after_at": after_at,
                                        "after_id": after_id, "limit": query.limit + 1}).all()
    items = [MessageView.model_validate(r._mapping) for r in rows[: query.limit]]
    last = items[-1] if len(rows) > query.limit else None
    return MessagePage(items=items, next_cursor=None if last is None else encode_cursor(last.sent_at, last.id))


def get_message(conn: Connection, tenant: TenantId, message_id: uuid.UUID) -> MessageView:
    row = conn.execute(ONE_MESSAGE, {"t": tenant, "id": message_id}).first()
    if row is None:
        raise NotFound(f"no message {message_id}")
    return MessageView.model_validate(row._mapping)


def list_drafts(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, *, limit: int,
                offset: int) -> tuple[list[DraftView], bool]:
    """One page of the conversation's drafts, oldest first, and whether another page follows."""
    get_conversation(conn, tenant, conversation_id)
    rows = conn.execute(LIST_DRAFTS, {"t": tenant, "id": conversation_id, "limit": limit + 1,
                                      "offset": offset}).all()
    return [DraftView.model_validate(r._mapping) for r in rows[:limit]], len(rows) > limit


def get_draft(conn: Connection, tenant: TenantId, draft_id: uuid.UUID) -> DraftView:
    row = conn.execute(ONE_DRAFT, {"t": tenant, "id": draft_id}).first()
    if row is None:
        raise NotFound(f"no draft {draft_id}")
    return DraftView.model_validate(row._mapping)


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> tuple[datetime | None, uuid.UUID | None]:
    """The time and id a cursor names; a cursor this API did not give is refused on its field."""
    if cursor is None:
        return None, None
    try:
        at, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError(at)
        return when, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid({"cursor": "not a cursor this API gave: pass `next_cursor` of the page before"}) from None
