"""A conversation's state as people move it: resolve, reopen, assign; and drafts accepted or rejected.

Each change locks the conversation (or draft), writes it, its audit row and, last, its change event, in the
caller's transaction. Asking for the state a conversation is already in changes nothing and records
nothing, so a retried request is harmless.

The SLA follows (`pipelines.lifecycle.sla`): the clock only ever breaches open conversations, so resolving
stops both clocks; reopening starts a new period at once, with fresh due times from the policy of the
conversation's priority and no breach, as a reopening inbound message does.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from db import direct
from db.tenancy import TenantId
from pipelines import audit, changes
from pipelines.control.common import FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION
from pipelines.control.errors import Conflict, Invalid, NotFound
from pipelines.control.fields import field_errors
from pipelines.desk import replies
from pipelines.desk.models import (
    AcceptedDraft,
    Assign,
    ConversationView,
    DraftAccept,
    DraftReject,
    DraftView,
    ReplyCreate,
    feed_conversation,
)
from pipelines.desk.views import get_conversation, get_draft
from pipelines.lifecycle import sla

LOCK = text("SELECT status, priority FROM conversations WHERE tenant_id = :t AND id = :id FOR UPDATE")
RESOLVE = text("""
UPDATE conversations SET status = 'resolved', resolved_at = now(), updated_at = now()
WHERE tenant_id = :t AND id = :id
""")
# A new SLA period: the clock is started again below, from now.
REOPEN = text("""
UPDATE conversations SET status = 'open', resolved_at = NULL, updated_at = now(), sla_started_at = NULL,
       first_response_due_at = NULL, resolution_due_at = NULL, sla_breached_at = NULL
WHERE tenant_id = :t AND id = :id
RETURNING statement_timestamp() AS at
""")
ASSIGN = text("""
UPDATE conversations SET team_id = :team, assignee = :assignee, updated_at = now() WHERE tenant_id = :t AND id = :id
""")
LOCK_DRAFT = text("SELECT status FROM ai_drafts WHERE tenant_id = :t AND id = :id FOR UPDATE")
REJECT_DRAFT = text("""
UPDATE ai_drafts SET status = 'rejected', reject_reason = :reason, decided_at = now(), decided_by = :actor,
       updated_at = now()
WHERE tenant_id = :t AND id = :id
""")


def _lock(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID) -> Any:
    row = conn.execute(LOCK, {"t": tenant, "id": conversation_id}).first()
    if row is None:
        raise NotFound(f"no conversation {conversation_id}")
    if row.status == "merged":
        raise Conflict("this conversation was merged into another")
    return row


def _changed(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, event: str, action: str,
             actor: audit.Actor, before: ConversationView) -> ConversationView:
    after = get_conversation(conn, tenant, conversation_id)
    fields = ("status", "assignee", "team_id", "resolved_at")
    audit.record(conn, actor=actor, action=action, tenant_id=tenant, subject_type="conversation",
                 subject_id=conversation_id, before=before.model_dump(mode="json", include=set(fields)),
                 after=after.model_dump(mode="json", include=set(fields)))
    changes.record(conn, tenant, [changes.Change(event, {"conversation": feed_conversation(after)},
                                                 conversation_id=conversation_id, subject_id=conversation_id)])
    return after


def resolve(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, *, actor: audit.Actor) -> ConversationView:
    row = _lock(conn, tenant, conversation_id)
    before = get_conversation(conn, tenant, conversation_id)
    if row.status == "resolved":
        return before
    conn.execute(RESOLVE, {"t": tenant, "id": conversation_id})
    return _changed(conn, tenant, conversation_id, "conversation.resolved", "conversation.resolve", actor, before)


def reopen(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, *, actor: audit.Actor) -> ConversationView:
    row = _lock(conn, tenant, conversation_id)
    before = get_conversation(conn, tenant, conversation_id)
    if row.status == "open":
        return before
    try:
        with direct.savepoint(conn):
            at: datetime = conn.execute(REOPEN, {"t": tenant, "id": conversation_id}).scalar_one()
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == UNIQUE_VIOLATION:
            raise Conflict("this contact has another open conversation in this inbox; reply there") from None
        raise
    sla.start_clocks(conn, tenant, [(conversation_id, at, row.priority)])
    return _changed(conn, tenant, conversation_id, "conversation.reopened", "conversation.reopen", actor, before)


def assign(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, request: Assign, *,
           actor: audit.Actor) -> ConversationView:
    if not request.model_fields_set:
        raise Invalid({"body": "give team_id, assignee or both (null clears one)"})
    _lock(conn, tenant, conversation_id)
    before = get_conversation(conn, tenant, conversation_id)
    given = request.model_dump(exclude_unset=True)
    team, assignee = given.get("team_id", before.team_id), given.get("assignee", before.assignee)
    if (team, assignee) == (before.team_id, before.assignee):
        return before
    try:
        with direct.savepoint(conn):
            conn.execute(ASSIGN, {"t": tenant, "id": conversation_id, "team": team, "assignee": assignee})
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION:
            raise Invalid({"team_id": "no such team in this tenant"}) from None
        raise
    return _changed(conn, tenant, conversation_id, "conversation.assigned", "conversation.assign", actor, before)


def accept_draft(conn: Connection, tenant: TenantId, draft_id: uuid.UUID, request: DraftAccept, *,
                 actor: audit.Actor) -> tuple[AcceptedDraft, replies.Reply]:
    """Send the draft, edited (`text`) or as written, through `replies.reply`; its key is the draft's, so a
    draft is sent once however often it is accepted (the same acceptance again answers with the same reply)."""
    draft = get_draft(conn, tenant, draft_id)
    try:
        body = ReplyCreate.model_validate({"text": request.text if request.text is not None else draft.content,
                                           "send": request.send, "draft_id": draft_id})
    except ValidationError as exc:
        fields = field_errors(exc)
        if request.text is None and "text" in fields:  # an erased or empty draft
            fields["text"] = "the draft has no text to send: give `text`"
        raise Invalid(fields) from None
    result = replies.reply(conn, tenant, draft.conversation_id, body, idempotency_key=f"draft:{draft_id}",
                           actor=actor)
    return AcceptedDraft(draft=result.draft or get_draft(conn, tenant, draft_id), message=result.message), result


def reject_draft(conn: Connection, tenant: TenantId, draft_id: uuid.UUID, request: DraftReject, *,
                 actor: audit.Actor) -> DraftView:
    row = conn.execute(LOCK_DRAFT, {"t": tenant, "id": draft_id}).first()
    if row is None:
        raise NotFound(f"no draft {draft_id}")
    if row.status == "rejected":
        return get_draft(conn, tenant, draft_id)
    if row.status != "pending":
        raise Conflict(f"this draft was already {row.status}")
    conn.execute(REJECT_DRAFT, {"t": tenant, "id": draft_id, "reason": request.reason, "actor": actor.name})
    audit.record(conn, actor=actor, action="draft.reject", tenant_id=tenant, subject_type="draft",
                 subject_id=draft_id, before={"status": "pending"},
                 after={"status": "rejected", "reason": request.reason})
    return get_draft(conn, tenant, draft_id)
