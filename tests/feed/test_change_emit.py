"""Every change the fleet makes is in the change feed, in the transaction that made it: ingest (contacts,
conversations, messages, merges, reopens), AI (classifications, drafts, budget alerts), the SLA clock, erasure
and retention. Real PostgreSQL, the pipelines as the workers call them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.assistant import assist_messages
from pipelines.inboxes import CreatedInbox
from pipelines.ingest import IngestPolicy, ingest_events
from pipelines.lifecycle import erasure, sla
from pipelines.lifecycle.retention import RetentionPolicy, apply_tenant
from tests.factories import deliver, new_inbox
from tests.ingest.test_ingest_isolation import poison
from tests.ingest.test_ingest_pipeline import api_message, store_events
from tests.lifecycle.test_retention import (
    clock_engine as clock_engine,  # the clock's role, as the retention tests make it
)

NOW = datetime.now(UTC)


def send(engine: Engine, inbox: CreatedInbox, external_id: str, body_text: str, *, at: datetime = NOW,
         **contact: str) -> Any:
    body = orjson.dumps({"id": external_id, "type": "message", "sent_at": at.isoformat(), "text": body_text,
                         "contact": contact})
    return deliver(engine, inbox, body, "application/json", headers={"webhook-id": f"wh-{external_id}"})


def feed(engine: Engine, tenant: TenantId, after: int = 0) -> list[changes.Item]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return changes.read(conn, tenant, after=after, limit=1000)


def types(items: list[changes.Item]) -> list[str]:
    return [i.type for i in items]


def test_a_new_sender_gives_contact_conversation_and_message_events_in_that_order(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    result = send(app_engine, inbox, "m1", "Hej, var är min order?", email="erik@example.se", name="Erik")
    items = feed(app_engine, inbox.tenant_id)
    assert types(items) == ["contact.created", "conversation.opened", "message.received"]
    assert [i.seq for i in items] == [1, 2, 3]
    contact, conversation, message = (i.data for i in items)
    received = message["message"]
    assert received["id"] == str(result.messages_created[0])
    assert (received["content"], received["direction"], received["status"], received["external_id"]) == (
        "Hej, var är min order?", "inbound", "received", "m1")
    assert received["inbox_id"] == str(inbox.id)
    assert datetime.fromisoformat(received["sent_at"]) == NOW.replace(microsecond=NOW.microsecond)
    assert contact["contact"]["id"] == received["contact_id"]
    assert contact["contact"]["display_name"] == "Erik"
    assert contact["contact"]["identities"] == [{"kind": "email", "value": "erik@example.se"}]
    # The conversation as the batch left it: counted, awaiting a reply.
    assert conversation["conversation"]["id"] == received["conversation_id"]
    assert conversation["conversation"]["status"] == "open"
    assert conversation["conversation"]["awaiting_reply"] is True
    assert conversation["conversation"]["last_message_at"] is not None
    assert "secrets" not in orjson.dumps([i.data for i in items]).decode()

    send(app_engine, inbox, "m2", "Och en sak till", email="erik@example.se")
    send(app_engine, inbox, "m2", "Och en sak till", email="erik@example.se")  # a provider's retry
    later = feed(app_engine, inbox.tenant_id, after=3)
    assert types(later) == ["message.received"]  # the known sender and open conversation are not news


def test_a_reopen_and_a_merge_are_told(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    send(app_engine, inbox, "a1", "first", email="anna@example.fi")
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE conversations SET status = 'resolved', resolved_at = now()"))
    head = feed(app_engine, tenant)[-1].seq
    send(app_engine, inbox, "a2", "again", email="anna@example.fi")
    assert types(feed(app_engine, tenant, head)) == ["conversation.reopened", "message.received"]

    send(app_engine, inbox, "p1", "by phone", phone="+358401234567")
    head = feed(app_engine, tenant)[-1].seq
    send(app_engine, inbox, "both", "one person", email="anna@example.fi", phone="+358401234567")
    merged = [i for i in feed(app_engine, tenant, head) if i.type == "contact.merged"]
    assert len(merged) == 1
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        survivor, loser = conn.execute(text("SELECT survivor_id, merged_id FROM contact_merges")).one()
    assert merged[0].data["contact"]["id"] == str(survivor) and merged[0].data["merged_id"] == str(loser)


def test_a_batch_attempt_that_fails_leaves_no_events(app_engine: Engine, admin_engine: Engine) -> None:
    """A batch holding one message that cannot be stored is split; the good events' changes are recorded once,
    the failed attempts' never, and the feed has no gap."""
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    with poison(admin_engine) as (marker, _):
        bodies = [api_message(f"g{n}", NOW, text_, email=f"p{n}@example.com")[0]
                  for n, text_ in enumerate(("good 0", f"bad {marker}", "good 2"))]
        ids = store_events(app_engine, inbox, bodies)
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            result = ingest_events(conn, tenant, ids, IngestPolicy())
    assert len(result.failed) == 1 and len(result.messages_created) == 2
    items = feed(app_engine, tenant)
    assert types(items).count("message.received") == 2
    assert types(items).count("contact.created") == 2  # the refused sender's contact rolled back, and its event
    assert sorted(i.data["message"]["content"] for i in items if i.type == "message.received") == ["good 0", "good 2"]
    assert [i.seq for i in items] == list(range(1, len(items) + 1))


def test_classification_draft_and_budget_alert_are_told(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    message_id = send(app_engine, inbox, "q1", "How do I reset my password?", email="ada@example.com").messages_created[0]
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE tenants SET settings = jsonb_set(settings, '{ai}', '{\"monthly_budget_usd\": 1}')"))
        conn.execute(text("INSERT INTO ai_usage (tenant_id, feature, provider, model, cost_usd) "
                          "VALUES (:t, 'classify', 'openai', 'x', 0.9)"), {"t": tenant})
    head = feed(app_engine, tenant)[-1].seq
    counts = assist_messages(app_engine, get_settings(), tenant, [message_id])
    assert counts["classified"] == 1
    items = feed(app_engine, tenant, head)
    assert types(items)[0] == "budget.alert"  # 90% spent: the 80% alert, once
    assert items[0].data["budget_alert"]["threshold"] == 80
    classified = next(i for i in items if i.type == "message.classified")
    assert classified.data["message"]["id"] == str(message_id)
    assert classified.data["classification"]["category"]
    if counts["drafted"]:
        draft = next(i for i in items if i.type == "draft.created")
        assert draft.data["draft"]["message_id"] == str(message_id) and draft.data["draft"]["content"]
    assert types(items).count("budget.alert") == 1
    assist_messages(app_engine, get_settings(), tenant, [message_id])  # done before: nothing new
    assert feed(app_engine, tenant, items[-1].seq) == []


def test_the_clock_tells_a_breach_once(app_engine: Engine, clock_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        sla.set_policy(conn, tenant, "normal", first_response_minutes=5, resolution_minutes=60)
    send(app_engine, inbox, "s1", "Hello?", email="slow@example.com")
    head = feed(app_engine, tenant)[-1].seq
    for _ in range(2):  # as the clock runs: its own role, bound to the tenant
        with clock_engine.begin() as conn:
            bind_tenant(conn, tenant)
            sla.mark_breaches(conn, tenant, datetime.now(UTC) + timedelta(minutes=10))
    items = feed(app_engine, tenant, head)
    assert types(items) == ["sla.breached"]
    assert items[0].data["breach"] == "first_response" and items[0].data["conversation"]["status"] == "open"


def test_erasure_removes_the_person_from_the_feed_and_announces_ids_only(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    send(app_engine, inbox, "e1", "Leveransadressen är Storgatan 12", email="erik.svensson@example.se",
         name="Erik Svensson", phone="+46701234567")
    send(app_engine, inbox, "o1", "Erik Svensson (erik.svensson@example.se) is my colleague",
         email="other@example.com", name="Other Person")
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        contact = erasure.find_contact(conn, tenant, identity=("email", "erik.svensson@example.se"))
        assert contact is not None
        done = erasure.erase_contact(conn, tenant, contact, actor="tests", policy=IngestPolicy())
    assert done.counts["change_events"] == 3  # his contact.created and message.received, the message naming him
    items = feed(app_engine, tenant)
    blob = orjson.dumps([i.data for i in items]).decode().lower()
    for trace in ("erik", "svensson", "46701234567", "storgatan"):
        assert trace not in blob, trace
    assert items[-1].type == "contact.erased"
    assert items[-1].data == {"contact": {"id": str(contact)}, "merged_ids": []}
    other = next(i for i in items if i.type == "message.received" and "message" in i.data
                 and i.data["message"]["external_id"] == "o1")
    assert other.data["message"]["content"] == "[erased] ([erased]) is my colleague"
    # Every event keeps its place: the feed has no gap, and a second erasure changes nothing.
    assert [i.seq for i in items] == list(range(1, len(items) + 1))
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        again = erasure.erase_contact(conn, tenant, contact, actor="tests", policy=IngestPolicy())
    assert again.already_erased and feed(app_engine, tenant, items[-1].seq) == []


def test_retention_removes_events_older_than_the_tenants_change_days(app_engine: Engine,
                                                                   clock_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    send(app_engine, inbox, "r1", "old", email="r@example.com")
    send(app_engine, inbox, "r2", "new", email="r@example.com")
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE change_events SET created_at = now() - interval '8 days' WHERE seq <= 3"))
    policy = RetentionPolicy.defaults(get_settings()).for_tenant({"retention": {"change_days": 7}})
    assert policy.change_days == 7
    removed = apply_tenant(clock_engine, tenant, policy, now=datetime.now(UTC), batch=2)
    assert removed.change_events == 3
    assert [i.seq for i in feed(app_engine, tenant)] == [4]
    assert uuid.UUID(feed(app_engine, tenant)[0].data["message"]["id"])
