"""The endpoints of conversations and replies: what the applications that read the tables write back.

Each handler is one call of `pipelines.desk` in a transaction of the fleet's role bound to the tenant the id
belongs to (row-level security holds, whoever the key is), as `intake conversation ...` calls the same
functions. A reply to send is handed to the `outbound` queue only after its transaction has committed.
"""

from __future__ import annotations

import uuid

import redis
import structlog
from starlette.responses import JSONResponse, Response

from db.tenancy import TenantId
from pipelines.control.models import Listing, Page
from pipelines.desk import corrections, replies, state, views
from pipelines.desk.models import IDEMPOTENCY_KEY as KEY_PATTERN
from pipelines.desk.models import (
    AcceptedDraft,
    Assign,
    ConversationDetail,
    ConversationPage,
    ConversationQuery,
    ConversationView,
    Correction,
    CorrectionView,
    DraftAccept,
    DraftReject,
    DraftView,
    MessagePage,
    MessageQuery,
    MessageView,
    ReplyCreate,
)
from workers.admin.ai import changed
from workers.admin.data import as_fleet
from workers.admin.http import Call, Endpoint
from workers.queues import OUTBOUND_QUEUE, SEND_ACTOR, enqueue

log = structlog.get_logger("intake.admin.conversations")

PREFIX = "/v1/admin"
IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENCY = {IDEMPOTENCY_KEY: (KEY_PATTERN, "1-200 printable ASCII characters naming this reply; the same key "
                                              "again answers with the same message and sends nothing twice")}
# A reply's text and HTML (64 KiB and 256 KiB of characters) may take several bytes a character in JSON.
MAX_REPLY_BODY = 2 * 1024 * 1024
REPLAYED = {200: "The same request under this Idempotency-Key was answered before: the same message, not again"}


def _tenant(call: Call) -> TenantId:
    assert call.tenant is not None  # every route here names an object of one tenant
    return TenantId(call.tenant)


def send_after_commit(call: Call, tenant: TenantId, message_id: uuid.UUID) -> None:
    """Hand a committed reply to the `outbound` queue. If Redis cannot take it, the reply stays stored and
    `queued` (the API has answered for it); the sending side's sweep finds queued replies left behind."""
    if call.admin.redis is None:
        log.warning("reply.enqueue.skipped", reason="no REDIS_URL", tenant_id=str(tenant), message_id=str(message_id))
        return
    try:
        enqueue(call.admin.redis, OUTBOUND_QUEUE, SEND_ACTOR, [(str(tenant), str(message_id))])
    except redis.RedisError as exc:
        log.error("reply.enqueue.failed", error=repr(exc), tenant_id=str(tenant), message_id=str(message_id))


def list_conversations(call: Call) -> ConversationPage:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return views.list_conversations(conn, tenant, call.query)


def show_conversation(call: Call) -> ConversationDetail:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return views.show_conversation(conn, tenant, call.ids["conversation_id"])


def list_messages(call: Call) -> MessagePage:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return views.list_messages(conn, tenant, call.ids["conversation_id"], call.query)


def list_drafts(call: Call) -> Listing[DraftView]:
    tenant, page = _tenant(call), call.query
    with as_fleet(call, tenant).begin() as conn:
        drafts, more = views.list_drafts(conn, tenant, call.ids["conversation_id"], limit=page.limit,
                                         offset=page.offset)
    return Listing[DraftView](items=drafts, next_offset=page.offset + page.limit if more else None)


def post_reply(call: Call) -> Response:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        result = replies.reply(conn, tenant, call.ids["conversation_id"], call.body,
                               idempotency_key=call.headers[IDEMPOTENCY_KEY], actor=call.actor)
    if result.to_send:
        send_after_commit(call, tenant, result.message.id)
    return _answer(result.message.model_dump(mode="json"), result.replayed)


def _answer(body: dict[str, object], replayed: bool) -> Response:
    return JSONResponse(body, status_code=200 if replayed else 201,
                        headers={"Idempotent-Replayed": "true"} if replayed else None)


def resolve(call: Call) -> ConversationView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return state.resolve(conn, tenant, call.ids["conversation_id"], actor=call.actor)


def reopen(call: Call) -> ConversationView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return state.reopen(conn, tenant, call.ids["conversation_id"], actor=call.actor)


def assign(call: Call) -> ConversationView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return state.assign(conn, tenant, call.ids["conversation_id"], call.body, actor=call.actor)


def accept_draft(call: Call) -> Response:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        accepted, result = state.accept_draft(conn, tenant, call.ids["draft_id"], call.body, actor=call.actor)
    if result.to_send:
        send_after_commit(call, tenant, result.message.id)
    return _answer(accepted.model_dump(mode="json"), result.replayed)


def reject_draft(call: Call) -> DraftView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return state.reject_draft(conn, tenant, call.ids["draft_id"], call.body, actor=call.actor)


def correct_classification(call: Call) -> CorrectionView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        correction = corrections.correct(conn, tenant, call.ids["message_id"], call.body, actor=call.actor)
    changed(call, tenant)  # the correction is an example now: the tenant's classifier learns it
    return correction


def endpoints() -> list[Endpoint]:
    c, conversation = f"{PREFIX}/conversations/{{conversation_id}}", ("conversation", "conversation_id")
    d, draft = f"{PREFIX}/drafts/{{draft_id}}", ("draft", "draft_id")
    return [
        Endpoint("GET", f"{PREFIX}/tenants/{{tenant_id}}/conversations",
                 "A tenant's conversations, newest activity first (cursor pages)", list_conversations,
                 ConversationPage, query=ConversationQuery, owner=("tenant", "tenant_id")),
        Endpoint("GET", c, "A conversation: state, SLA, assignment, latest classification and correction",
                 show_conversation, ConversationDetail, owner=conversation),
        Endpoint("GET", c + "/messages", "A conversation's messages, oldest first (cursor pages)", list_messages,
                 MessagePage, query=MessageQuery, owner=conversation),
        Endpoint("GET", c + "/drafts", "A conversation's AI drafts, oldest first", list_drafts, Listing[DraftView],
                 query=Page, owner=conversation),
        Endpoint("POST", c + "/messages", "Reply: send through the channel (send: true) or record a reply sent "
                 "elsewhere; once per Idempotency-Key", post_reply, MessageView, body=ReplyCreate, status=201,
                 owner=conversation, headers=IDEMPOTENCY, max_body=MAX_REPLY_BODY, also=REPLAYED),
        Endpoint("POST", c + "/resolve", "Resolve a conversation (stops its SLA clocks)", resolve, ConversationView,
                 owner=conversation),
        Endpoint("POST", c + "/reopen", "Reopen a conversation (a new SLA period starts)", reopen, ConversationView,
                 owner=conversation),
        Endpoint("POST", c + "/assign", "Assign a conversation to a team and/or an agent", assign, ConversationView,
                 body=Assign, owner=conversation),
        Endpoint("POST", d + "/accept", "Send an AI draft, edited or as written, as the reply (once per draft)",
                 accept_draft, AcceptedDraft, body=DraftAccept, status=201, owner=draft,
                 max_body=MAX_REPLY_BODY, also={200: "This draft was accepted before: the same reply"}),
        Endpoint("POST", d + "/reject", "Reject an AI draft", reject_draft, DraftView, body=DraftReject,
                 owner=draft),
        Endpoint("PUT", f"{PREFIX}/messages/{{message_id}}/classification",
                 "Correct a message's category and/or priority (kept as an example for the tenant's AI)",
                 correct_classification, CorrectionView, body=Correction, owner=("message", "message_id")),
    ]
