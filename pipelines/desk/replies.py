"""A reply: an outbound message stored once per Idempotency-Key, and the conversation answered.

`reply` runs in the caller's transaction. It locks the conversation, then inserts the message with
`ON CONFLICT (tenant_id, idempotency_key) DO NOTHING`: the unique index decides which request stores the
reply, so two threads or two processes sending the same key store one message (the second waits for the
first's commit, finds its row and answers with it). A key seen before answers with the message it stored, as
long as the request is the same one (its SHA-256 is kept in the message's metadata); another request under
a used key is refused (409), never stored and never sent.

A reply stored anew:
- is `queued` with `send` (the caller enqueues `send_message` on the `outbound` queue *after* the commit;
  `pipelines.outbound` sends it and moves its status on) or `sent` without (a reply sent elsewhere);
- carries `external_id = 'intake:<id>'` until the provider's own id replaces it;
- answers the conversation: `awaiting_reply` cleared, `first_response_at` set the first time, counts and
  `last_message_at` moved; its `sent_at` (the database's now) is what the SLA clock reads, so a reply before
  the first-response due time makes that period's first-response breach impossible;
- accepts its draft (`draft_id`), recording whether the text was edited;
- is audited, and recorded in the change feed as `message.sent` (at once, queued or not; the sending side
  records `message.status_updated` as the provider moves it).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines import audit, changes
from pipelines.control.errors import Conflict, Invalid, NotFound
from pipelines.desk.models import DraftView, MessageView, ReplyCreate, feed_message
from pipelines.desk.views import get_draft, get_message

LOCK_CONVERSATION = text("""
SELECT id, inbox_id, contact_id, status FROM conversations WHERE tenant_id = :t AND id = :id FOR UPDATE
""")
INSERT_REPLY = text("""
INSERT INTO messages (id, tenant_id, inbox_id, conversation_id, contact_id, direction, kind, external_id, subject,
                      content, content_html, metadata, status, status_updated_at, sent_at, received_at,
                      idempotency_key)
VALUES (:id, :t, :inbox, :conversation, :contact, 'outbound', 'text', :external_id, :subject, :content, :html,
        CAST(:metadata AS jsonb), :status, now(), now(), now(), :key)
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, sent_at
""")
BY_KEY = text("""
SELECT id, metadata ->> 'request_sha256' AS request_sha256 FROM messages WHERE tenant_id = :t AND idempotency_key = :key
""")
ANSWERED = text("""
UPDATE conversations SET message_count = message_count + 1,
       first_message_at = LEAST(first_message_at, :at), last_message_at = GREATEST(last_message_at, :at),
       awaiting_reply = false, first_response_at = COALESCE(first_response_at, :at), updated_at = now()
WHERE tenant_id = :t AND id = :id
""")
LOCK_DRAFT = text("""
SELECT id, conversation_id, status, content FROM ai_drafts WHERE tenant_id = :t AND id = :id FOR UPDATE
""")
ACCEPT_DRAFT = text("""
UPDATE ai_drafts SET status = 'accepted', reply_id = :reply, edited = :edited, decided_at = now(),
       decided_by = :actor, updated_at = now()
WHERE tenant_id = :t AND id = :id
""")


@dataclass(frozen=True)
class Reply:
    message: MessageView
    replayed: bool  # an earlier request with the same key stored it: nothing new was stored or queued
    draft: DraftView | None = None

    @property
    def to_send(self) -> bool:
        """Whether the caller enqueues `send_message` for it after the commit."""
        return not self.replayed and self.message.status == "queued"


def fingerprint(conversation_id: uuid.UUID, request: ReplyCreate) -> str:
    """What makes two requests under one key the same request."""
    body = {"conversation_id": str(conversation_id), **request.model_dump(mode="json")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def reply(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, request: ReplyCreate, *,
          idempotency_key: str, actor: audit.Actor) -> Reply:
    """Store the reply (or find the one stored under `idempotency_key`); see the module's docstring."""
    conversation = conn.execute(LOCK_CONVERSATION, {"t": tenant, "id": conversation_id}).first()
    if conversation is None:
        raise NotFound(f"no conversation {conversation_id}")
    digest = fingerprint(conversation_id, request)
    message_id = uuid.uuid4()
    metadata = {"author": actor.name, "request_sha256": digest,
                **({"author_key_id": str(actor.key_id)} if actor.key_id else {}),
                **({"draft_id": str(request.draft_id)} if request.draft_id else {})}
    stored = conn.execute(INSERT_REPLY, {
        "id": message_id, "t": tenant, "inbox": conversation.inbox_id, "conversation": conversation_id,
        "contact": conversation.contact_id, "external_id": f"intake:{message_id}", "subject": request.subject,
        "content": request.text, "html": request.html, "metadata": orjson.dumps(metadata).decode(),
        "status": "queued" if request.send else "sent", "key": idempotency_key}).first()
    if stored is None:
        return _replayed(conn, tenant, idempotency_key, digest)
    if conversation.status == "merged":
        raise Conflict("this conversation was merged into another; reply there")
    conn.execute(ANSWERED, {"t": tenant, "id": conversation_id, "at": stored.sent_at})
    draft = None
    if request.draft_id is not None:
        draft = _accept_draft(conn, tenant, conversation_id, request, message_id, actor)
    message = get_message(conn, tenant, message_id)
    audit.record(conn, actor=actor, action="conversation.reply", tenant_id=tenant, subject_type="message",
                 subject_id=message_id, after={"conversation_id": str(conversation_id), "send": request.send,
                                               "draft_id": str(request.draft_id) if request.draft_id else None})
    data: dict[str, Any] = {"message": feed_message(message)}
    if draft is not None:
        data["draft"] = draft.model_dump(mode="json", include={"id", "status", "edited", "reply_id"})
    changes.record(conn, tenant, [changes.Change("message.sent", data, conversation_id=conversation_id,
                                                 subject_id=message_id)])
    return Reply(message, replayed=False, draft=draft)


def _replayed(conn: Connection, tenant: TenantId, key: str, digest: str) -> Reply:
    found = conn.execute(BY_KEY, {"t": tenant, "key": key}).first()
    if found is None:  # only a row this transaction cannot see: a concurrent erasure or deletion
        raise Conflict("this Idempotency-Key is in use by a request that has not finished; retry")
    if found.request_sha256 != digest:
        raise Conflict("this Idempotency-Key was used for another request; use a new key for a new reply")
    return Reply(get_message(conn, tenant, uuid.UUID(str(found.id))), replayed=True)


def _accept_draft(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, request: ReplyCreate,
                  message_id: uuid.UUID, actor: audit.Actor) -> DraftView:
    draft = conn.execute(LOCK_DRAFT, {"t": tenant, "id": request.draft_id}).first()
    if draft is None or draft.conversation_id != conversation_id:
        raise Invalid({"draft_id": "no such draft in this conversation"})
    if draft.status != "pending":
        raise Conflict(f"this draft was already {draft.status}")
    conn.execute(ACCEPT_DRAFT, {"t": tenant, "id": draft.id, "reply": message_id, "actor": actor.name,
                                "edited": request.text != draft.content})
    return get_draft(conn, tenant, draft.id)
