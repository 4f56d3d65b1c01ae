"""Conversations at the command line: `intake conversation list|show|reply|resolve|reopen|assign`.

Each command calls the function behind the admin API's endpoint (`pipelines.desk`) in a transaction of the
fleet's role bound to the conversation's tenant, so the two refuse, audit and record feed events alike; a
reply to send is handed to the `outbound` queue after the commit. Changes are audited as `cli:<user>`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
import redis
from rich.markup import escape
from sqlalchemy import Connection

from db.tenancy import TenantId
from pipelines.control.common import owner_of
from pipelines.desk import replies, state, views
from pipelines.desk.models import IDEMPOTENCY_KEY, Assign, ConversationQuery, MessageQuery, ReplyCreate
from workers.cli.common import BadInput, When, admin_engine, console, emit, friendly_errors, maintenance_runtime, out
from workers.cli.control import actor, build, show
from workers.cli.lifecycle import JSON, redis_client, tenant_transaction, uuid_argument
from workers.embedded.runtime import Runtime
from workers.queues import OUTBOUND_QUEUE, SEND_ACTOR, enqueue

LIST_COLUMNS = ("id", "status", "awaiting_reply", "assignee", "category", "priority", "message_count", "updated_at")


@contextmanager
def bound(command: str, kind: str, object_id: uuid.UUID) -> Iterator[tuple[Runtime, Connection, TenantId]]:
    """The runtime, and a transaction as the fleet's role bound to the tenant `object_id` belongs to."""
    rt = maintenance_runtime(command)
    engine = admin_engine(rt)
    try:
        with engine.connect() as conn:
            tenant = owner_of(conn, kind, object_id)
    finally:
        engine.dispose()
    assert tenant is not None  # conversations belong to a tenant
    with tenant_transaction(rt, tenant) as conn:
        yield rt, conn, TenantId(tenant)


@click.group("conversation")
def conversation() -> None:
    """Conversations: read them, reply, resolve, reopen and assign (as the admin API does)."""


@conversation.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--status", type=click.Choice(["open", "resolved", "merged"]), default=None)
@click.option("--inbox", "inbox_id", default=None, help="Only this inbox's conversations.")
@click.option("--assignee", default=None, help="Only those assigned to this agent.")
@click.option("--updated-since", type=When(), default=None, help="ISO date/time or an age such as 2h or 7d.")
@click.option("--cursor", default=None, help="`next_cursor` of the page before.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@JSON
@friendly_errors
def conversation_list(tenant_id: str, status: str | None, inbox_id: str | None, assignee: str | None,
                      updated_since: datetime | None, cursor: str | None, limit: int, as_json: bool) -> None:
    """A tenant's conversations, newest activity first."""
    tenant = uuid_argument(tenant_id, "--tenant")
    query = build(ConversationQuery, {"status": status, "inbox_id": inbox_id, "assignee": assignee,
                                      "updated_since": updated_since, "cursor": cursor, "limit": limit})
    rt = maintenance_runtime("intake conversation list")
    with tenant_transaction(rt, tenant) as conn:
        page = views.list_conversations(conn, TenantId(tenant), query)
    if as_json:
        emit(page.model_dump(mode="json"))
        return
    for item in page.items:
        data = item.model_dump(mode="json")
        out.print("  ".join(str(data[c]) for c in LIST_COLUMNS), highlight=False, markup=False)
    if page.next_cursor is not None:
        out.print(f"[dim]more: --cursor {page.next_cursor}[/]")


@conversation.command("show")
@click.argument("conversation_id")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True, help="Messages to show.")
@JSON
@friendly_errors
def conversation_show(conversation_id: str, limit: int, as_json: bool) -> None:
    """A conversation, its SLA and classification, and its first messages (oldest first)."""
    cid = uuid_argument(conversation_id, "CONVERSATION_ID")
    with bound("intake conversation show", "conversation", cid) as (_, conn, tenant):
        detail = views.show_conversation(conn, tenant, cid)
        thread = views.list_messages(conn, tenant, cid, MessageQuery(limit=limit))
    if as_json:
        emit({**detail.model_dump(mode="json"), "messages": thread.model_dump(mode="json")})
        return
    show(detail, False, ("id", "status", "awaiting_reply", "assignee", "team_id", "category", "priority",
                         "first_response_at", "last_message_at", "sla"))
    for message in thread.items:
        arrow = "<-" if message.direction == "inbound" else "->"
        out.print(f"[dim]{message.sent_at:%Y-%m-%d %H:%M}[/] {arrow} {escape(message.content)}", highlight=False)


@conversation.command("reply")
@click.argument("conversation_id")
@click.option("--text", "text_", required=True, help="The reply's text.")
@click.option("--html", default=None, help="An HTML version (email channels).")
@click.option("--subject", default=None, help="The subject (email channels).")
@click.option("--send/--no-send", "send", default=None,
              help="--send: through the channel; --no-send: record a reply sent elsewhere. One is required.")
@click.option("--draft", "draft_id", default=None, help="The AI draft this reply is (accepted with it).")
@click.option("--idempotency-key", default=None, help="Reuse to retry safely (default: a new key each time).")
@JSON
@friendly_errors
def conversation_reply(conversation_id: str, text_: str, html: str | None, subject: str | None, send: bool | None,
                       draft_id: str | None, idempotency_key: str | None, as_json: bool) -> None:
    """Reply to a conversation's contact (once per idempotency key)."""
    if send is None:
        raise BadInput("say --send (through the channel) or --no-send (a reply sent elsewhere)")
    cid = uuid_argument(conversation_id, "CONVERSATION_ID")
    request = build(ReplyCreate, {"text": text_, "html": html, "subject": subject, "send": send,
                                  "draft_id": draft_id})
    key = idempotency_key or f"cli-{uuid.uuid4()}"
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadInput("--idempotency-key must be 1-200 printable ASCII characters")
    with bound("intake conversation reply", "conversation", cid) as (rt, conn, tenant):
        result = replies.reply(conn, tenant, cid, request, idempotency_key=key, actor=actor())
    if result.to_send:
        _enqueue(rt, tenant, result.message.id)
    data = {**result.message.model_dump(mode="json"), "replayed": result.replayed}
    if as_json:
        emit(data)
        return
    out.print(f"{'already stored' if result.replayed else 'stored'}: {data['id']} ({data['status']})",
              highlight=False)


def _enqueue(rt: Runtime, tenant: TenantId, message_id: uuid.UUID) -> None:
    client = redis_client(rt)
    try:
        enqueue(client, OUTBOUND_QUEUE, SEND_ACTOR, [(str(tenant), str(message_id))])
    except redis.RedisError as exc:
        console.print(f"[yellow]warning:[/] stored and queued, but Redis did not take the job ({escape(repr(exc))})")
    finally:
        client.close()


def _state(command: str, conversation_id: str, as_json: bool, change: Any) -> None:
    cid = uuid_argument(conversation_id, "CONVERSATION_ID")
    with bound(f"intake conversation {command}", "conversation", cid) as (_, conn, tenant):
        view = change(conn, tenant, cid)
    show(view, as_json, ("id", "status", "assignee", "team_id", "updated_at"))


@conversation.command("resolve")
@click.argument("conversation_id")
@JSON
@friendly_errors
def conversation_resolve(conversation_id: str, as_json: bool) -> None:
    """Resolve a conversation (its SLA clocks stop)."""
    _state("resolve", conversation_id, as_json, lambda c, t, i: state.resolve(c, t, i, actor=actor()))


@conversation.command("reopen")
@click.argument("conversation_id")
@JSON
@friendly_errors
def conversation_reopen(conversation_id: str, as_json: bool) -> None:
    """Reopen a conversation (a new SLA period starts now)."""
    _state("reopen", conversation_id, as_json, lambda c, t, i: state.reopen(c, t, i, actor=actor()))


@conversation.command("assign")
@click.argument("conversation_id")
@click.option("--team", "team_id", default=None, help="A team's id; `none` clears it.")
@click.option("--assignee", default=None, help="An agent's id as your application knows it; `none` clears it.")
@JSON
@friendly_errors
def conversation_assign(conversation_id: str, team_id: str | None, assignee: str | None, as_json: bool) -> None:
    """Assign a conversation to a team and/or an agent."""
    given: dict[str, Any] = {}
    if team_id is not None:
        given["team_id"] = None if team_id == "none" else team_id
    if assignee is not None:
        given["assignee"] = None if assignee == "none" else assignee
    request = build(Assign, given)
    _state("assign", conversation_id, as_json, lambda c, t, i: state.assign(c, t, i, request, actor=actor()))


COMMANDS = (conversation,)
