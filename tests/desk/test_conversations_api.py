"""The conversation API over real HTTP: replies once per Idempotency-Key (also from two threads at once), the
SLA clock that a reply stops, state changes with their feed events and audit rows, drafts, corrections, and
hostile input on every body, header and query field."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines.ai import training
from pipelines.inboxes import CreatedInbox
from pipelines.lifecycle import sla
from tests.admin_server import Keyed, admin_server, client, make_key
from tests.factories import deliver, new_inbox
from workers.training import pending_key


@pytest.fixture
def inbox(app_engine: Engine) -> CreatedInbox:
    return new_inbox(app_engine, "api", tenant_name="Desk tenant")


@pytest.fixture
def tk(base: str, admin_engine: Engine, inbox: CreatedInbox) -> Iterator[httpx.Client]:
    key = make_key(admin_engine, tenant_id=inbox.tenant_id, name="agent-inbox")
    with client(base, key) as http:
        yield http


def inbound(app_engine: Engine, inbox: CreatedInbox, email: str = "ada@example.com", text_: str = "My invoice is wrong",
            sent_at: datetime | None = None) -> uuid.UUID:
    """Deliver one message as the api channel would; the id of its conversation."""
    msg_id = uuid.uuid4().hex
    body = orjson.dumps({"id": msg_id, "type": "message", "sent_at": (sent_at or datetime.now(UTC)).isoformat(),
                         "text": text_, "contact": {"email": email}})
    deliver(app_engine, inbox, body, "application/json", headers={"webhook-id": msg_id})
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return uuid.UUID(str(conn.execute(text("SELECT conversation_id FROM messages WHERE external_id = :e"),
                                          {"e": msg_id}).scalar_one()))


def feed(app_engine: Engine, tenant: TenantId) -> list[dict[str, Any]]:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        return [dict(r) for r in conn.execute(text(
            "SELECT type, data, conversation_id, subject_id FROM change_events ORDER BY seq")).mappings()]


def rows(app_engine: Engine, tenant: TenantId, sql: str, **params: Any) -> list[Any]:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        return list(conn.execute(text(sql), params))


def reply(tk: httpx.Client, conversation: uuid.UUID, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return tk.post(f"/v1/admin/conversations/{conversation}/messages", json=body,
                   headers={"Idempotency-Key": key or uuid.uuid4().hex})


def test_a_reply_answers_the_conversation_and_is_recorded_once(tk: httpx.Client, app_engine: Engine,
                                                               inbox: CreatedInbox) -> None:
    conversation = inbound(app_engine, inbox)
    listed = tk.get(f"/v1/admin/tenants/{inbox.tenant_id}/conversations").json()
    assert [c["id"] for c in listed["items"]] == [str(conversation)]
    assert listed["items"][0]["awaiting_reply"] is True and listed["items"][0]["first_response_at"] is None

    first = reply(tk, conversation, {"text": "We are on it.", "send": False}, key="reply-1")
    assert first.status_code == 201, first.text
    message = first.json()
    assert (message["direction"], message["status"], message["content"]) == ("outbound", "sent", "We are on it.")
    assert message["external_id"] == f"intake:{message['id']}" and message["author"] == "key:agent-inbox"

    shown = tk.get(f"/v1/admin/conversations/{conversation}").json()
    assert shown["awaiting_reply"] is False and shown["message_count"] == 2
    assert shown["first_response_at"] == shown["last_message_at"] is not None
    thread = tk.get(f"/v1/admin/conversations/{conversation}/messages").json()["items"]
    assert [(m["direction"], m["content"]) for m in thread] == [("inbound", "My invoice is wrong"),
                                                               ("outbound", "We are on it.")]

    again = reply(tk, conversation, {"text": "We are on it.", "send": False}, key="reply-1")
    assert again.status_code == 200 and again.json() == message
    assert again.headers["idempotent-replayed"] == "true"
    other = reply(tk, conversation, {"text": "Something else", "send": False}, key="reply-1")
    assert other.status_code == 409 and "another request" in other.json()["detail"]

    assert len(rows(app_engine, inbox.tenant_id, "SELECT id FROM messages WHERE direction = 'outbound'")) == 1
    events = [e for e in feed(app_engine, inbox.tenant_id) if e["type"] == "message.sent"]
    assert len(events) == 1 and events[0]["data"]["message"]["id"] == message["id"]
    assert events[0]["data"]["message"]["content"] == "We are on it."
    assert rows(app_engine, inbox.tenant_id, "SELECT action, subject_id FROM audit_logs WHERE action LIKE 'conv%'") \
        == [("conversation.reply", message["id"])]
    # A second reply keeps the first response's time.
    later = reply(tk, conversation, {"text": "Fixed now.", "send": False})
    assert later.status_code == 201
    assert tk.get(f"/v1/admin/conversations/{conversation}").json()["first_response_at"] == \
        shown["first_response_at"]


def test_the_same_key_from_two_threads_stores_and_queues_one_message(tk: httpx.Client, app_engine: Engine,
                                                                     inbox: CreatedInbox, stack: dict[str, str]) -> None:
    conversation = inbound(app_engine, inbox)
    answers: list[httpx.Response] = []
    start = threading.Barrier(2)

    def send() -> None:
        start.wait()
        answers.append(reply(tk, conversation, {"text": "Once only", "send": True}, key="together"))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    message = answers[0].json()
    assert message["status"] == "queued" and message["external_id"] == f"intake:{message['id']}"
    assert len(rows(app_engine, inbox.tenant_id, "SELECT id FROM messages WHERE direction = 'outbound'")) == 1
    # Handed to the outbound queue once, with the tenant's and the message's ids.
    jobs = [orjson.loads(body) for body in redis.Redis.from_url(stack["REDIS_URL"]).hvals("dramatiq:outbound.msgs")]
    mine = [j for j in jobs if message["id"] in j["args"]]
    assert [(j["actor_name"], j["queue_name"], j["args"]) for j in mine] == [
        ("send_message", "outbound", [str(inbox.tenant_id), message["id"]])]


def test_the_same_key_through_two_admin_processes_stores_and_queues_one_message(
        base: str, admin_engine: Engine, app_engine: Engine, inbox: CreatedInbox, stack: dict[str, str],
        redis_client: redis.Redis) -> None:
    """Two admin processes share nothing but the database: the key's unique index decides which one stores."""
    conversation = inbound(app_engine, inbox)
    key = make_key(admin_engine, tenant_id=inbox.tenant_id, name="agent-inbox")
    answers: list[httpx.Response] = []
    start = threading.Barrier(2)

    def send(url: str) -> None:
        with client(url, key) as http:
            start.wait()
            answers.append(reply(http, conversation, {"text": "Once only", "send": True}, key="two-processes"))

    with admin_server(stack) as other:
        threads = [threading.Thread(target=send, args=(url,)) for url in (base, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert answers[0].json() == answers[1].json()
    message = answers[0].json()
    assert len(rows(app_engine, inbox.tenant_id, "SELECT id FROM messages WHERE direction = 'outbound'")) == 1
    jobs = [orjson.loads(body) for body in redis_client.hvals("dramatiq:outbound.msgs")]
    assert len([j for j in jobs if message["id"] in j["args"]]) == 1


def test_a_reply_before_the_due_time_means_no_first_response_breach(tk: httpx.Client, app_engine: Engine,
                                                                     inbox: CreatedInbox) -> None:
    assert tk.put(f"/v1/admin/tenants/{inbox.tenant_id}/sla-policies/normal",
                  json={"first_response_minutes": 60}).status_code == 200
    answered = inbound(app_engine, inbox, email="answered@example.com")
    ignored = inbound(app_engine, inbox, email="ignored@example.com")
    assert reply(tk, answered, {"text": "Looking into it", "send": True}).status_code == 201
    due = datetime.fromisoformat(tk.get(f"/v1/admin/conversations/{answered}").json()["sla"]["first_response_due_at"])
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        found = sla.mark_breaches(conn, inbox.tenant_id, due + timedelta(minutes=1))
    assert (found.first_response, found.resolution) == (1, 0)  # the ignored one only
    answered_sla = tk.get(f"/v1/admin/conversations/{answered}").json()["sla"]
    ignored_sla = tk.get(f"/v1/admin/conversations/{ignored}").json()["sla"]
    assert answered_sla["breached_at"] is None and answered_sla["first_response_breached"] is False
    assert answered_sla["responded_at"] is not None
    assert ignored_sla["breached_at"] is not None and ignored_sla["first_response_breached"] is True


def test_resolve_reopen_and_assign_move_the_state_and_the_clock(tk: httpx.Client, app_engine: Engine,
                                                                inbox: CreatedInbox) -> None:
    assert tk.put(f"/v1/admin/tenants/{inbox.tenant_id}/sla-policies/normal",
                  json={"first_response_minutes": 30, "resolution_minutes": 120}).status_code == 200
    conversation = inbound(app_engine, inbox)
    path = f"/v1/admin/conversations/{conversation}"
    resolved = tk.post(path + "/resolve")
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    assert tk.post(path + "/resolve").json()["updated_at"] == resolved.json()["updated_at"]  # nothing again
    with app_engine.begin() as conn:  # resolved: neither clock can breach
        bind_tenant(conn, inbox.tenant_id)
        late = sla.mark_breaches(conn, inbox.tenant_id, datetime.now(UTC) + timedelta(days=30))
    assert (late.first_response, late.resolution) == (0, 0)

    reopened = tk.post(path + "/reopen").json()
    assert reopened["status"] == "open" and reopened["resolved_at"] is None
    started = datetime.fromisoformat(reopened["sla"]["started_at"])
    assert datetime.fromisoformat(reopened["sla"]["resolution_due_at"]) == started + timedelta(minutes=120)
    assert reopened["sla"]["breached_at"] is None

    team = tk.post(f"/v1/admin/tenants/{inbox.tenant_id}/teams", json={"name": "Billing"}).json()["id"]
    assigned = tk.post(path + "/assign", json={"team_id": team, "assignee": "agent-7"}).json()
    assert (assigned["team_id"], assigned["assignee"]) == (team, "agent-7")
    kept = tk.post(path + "/assign", json={"assignee": None}).json()
    assert (kept["team_id"], kept["assignee"]) == (team, None)
    unknown = tk.post(path + "/assign", json={"team_id": str(uuid.uuid4())})
    assert unknown.status_code == 422 and "team_id" in unknown.json()["fields"]

    types = [e["type"] for e in feed(app_engine, inbox.tenant_id) if e["conversation_id"] == conversation]
    # The ingest's events of the customer's message, then the state changes.
    assert types == ["conversation.opened", "message.received", "conversation.resolved", "conversation.reopened",
                     "conversation.assigned", "conversation.assigned"]
    event = next(e for e in feed(app_engine, inbox.tenant_id) if e["type"] == "conversation.assigned")
    assert event["data"]["conversation"]["assignee"] == "agent-7"
    actions = [r.action for r in rows(app_engine, inbox.tenant_id,
                                      "SELECT action FROM audit_logs WHERE subject_id = :c ORDER BY created_at",
                                      c=str(conversation))]
    assert actions == ["conversation.resolve", "conversation.reopen", "conversation.assign", "conversation.assign"]
    # Resolved here, then the customer writes again within the reopen window: the same conversation reopens.
    assert tk.post(path + "/resolve").json()["status"] == "resolved"
    assert inbound(app_engine, inbox, text_="It happened again") == conversation
    again = tk.get(path).json()
    assert (again["status"], again["awaiting_reply"], again["resolved_at"]) == ("open", True, None)
    assert [e["type"] for e in feed(app_engine, inbox.tenant_id) if e["conversation_id"] == conversation][-3:] == [
        "conversation.resolved", "conversation.reopened", "message.received"]


def test_listing_filters_and_pages_by_cursor(tk: httpx.Client, app_engine: Engine, inbox: CreatedInbox) -> None:
    ids = [inbound(app_engine, inbox, email=f"p{n}@example.com") for n in range(3)]
    tk.post(f"/v1/admin/conversations/{ids[0]}/assign", json={"assignee": "agent-1"})
    tk.post(f"/v1/admin/conversations/{ids[1]}/resolve")
    url = f"/v1/admin/tenants/{inbox.tenant_id}/conversations"
    seen, cursor = [], None
    while True:
        page = tk.get(url, params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(ids[1]), str(ids[0]), str(ids[2])]  # newest activity first, each once
    assert [c["id"] for c in tk.get(url, params={"status": "resolved"}).json()["items"]] == [str(ids[1])]
    assert [c["id"] for c in tk.get(url, params={"assignee": "agent-1"}).json()["items"]] == [str(ids[0])]
    assert len(tk.get(url, params={"inbox_id": str(inbox.id)}).json()["items"]) == 3
    assert tk.get(url, params={"inbox_id": str(uuid.uuid4())}).json()["items"] == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert tk.get(url, params={"updated_since": future}).json()["items"] == []


def test_drafts_are_accepted_once_edited_or_not_and_rejected(tk: httpx.Client, app_engine: Engine,
                                                            inbox: CreatedInbox) -> None:
    conversation = inbound(app_engine, inbox)
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        message = conn.execute(text("SELECT id FROM messages WHERE conversation_id = :c"),
                               {"c": conversation}).scalar_one()
        drafts = [conn.execute(text(
            "INSERT INTO ai_drafts (tenant_id, message_id, conversation_id, prompt_version, content, confidence, "
            "provider, model) VALUES (:t, :m, :c, :v, 'Refunds take 5 days.', 0.8, 'local', 'm') RETURNING id"),
            {"t": inbox.tenant_id, "m": message, "c": conversation, "v": f"v{n}"}).scalar_one() for n in (1, 2)]
    listed = tk.get(f"/v1/admin/conversations/{conversation}/drafts").json()["items"]
    assert sorted((d["id"], d["status"]) for d in listed) == sorted((str(d), "pending") for d in drafts)

    accepted = tk.post(f"/v1/admin/drafts/{drafts[0]}/accept", json={"text": "Refunds take 3 days.", "send": False})
    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert (body["draft"]["status"], body["draft"]["edited"]) == ("accepted", True)
    assert body["draft"]["reply_id"] == body["message"]["id"]
    assert (body["message"]["content"], body["message"]["draft_id"]) == ("Refunds take 3 days.", str(drafts[0]))
    again = tk.post(f"/v1/admin/drafts/{drafts[0]}/accept", json={"text": "Refunds take 3 days.", "send": False})
    assert again.status_code == 200 and again.json()["message"]["id"] == body["message"]["id"]
    assert tk.post(f"/v1/admin/drafts/{drafts[0]}/reject", json={}).status_code == 409

    rejected = tk.post(f"/v1/admin/drafts/{drafts[1]}/reject", json={"reason": "wrong policy"}).json()
    assert (rejected["status"], rejected["reject_reason"]) == ("rejected", "wrong policy")
    late = reply(tk, conversation, {"text": "x", "send": False, "draft_id": str(drafts[1])})
    assert late.status_code == 409
    assert len(rows(app_engine, inbox.tenant_id, "SELECT id FROM messages WHERE direction = 'outbound'")) == 1
    sent = [e for e in feed(app_engine, inbox.tenant_id) if e["type"] == "message.sent"]
    assert [e["data"]["draft"]["edited"] for e in sent] == [True]


def test_a_correction_is_shown_fed_and_kept_as_an_example(tk: httpx.Client, app_engine: Engine,
                                                          inbox: CreatedInbox, redis_client: redis.Redis) -> None:
    conversation = inbound(app_engine, inbox, text_="The app crashes when I log in")
    thread = tk.get(f"/v1/admin/conversations/{conversation}/messages").json()["items"]
    message = thread[0]["id"]
    with app_engine.begin() as conn:  # what the AI worker stores for the message
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text(
            "INSERT INTO ai_classifications (tenant_id, message_id, prompt_version, category, priority, sentiment, "
            "language, confidence, reasoning, provider, model) VALUES (:t, :m, 'v1', 'billing', 'normal', "
            "'negative', 'en', 0.61, 'mentions the app', 'local', 'local-lexical-v1')"),
            {"t": inbox.tenant_id, "m": message})
    ai = tk.get(f"/v1/admin/conversations/{conversation}").json()
    assert (ai["classification"]["message_id"], ai["classification"]["category"]) == (message, "billing")
    assert ai["classification"]["model"] == "local-lexical-v1" and ai["correction"] is None
    path = f"/v1/admin/messages/{message}/classification"
    assert redis_client.get(pending_key(inbox.tenant_id)) is None
    corrected = tk.put(path, json={"category": "technical", "priority": "urgent"})
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["actor"] == "key:agent-inbox" and corrected.json()["actor_key_id"] is not None
    shown = tk.get(f"/v1/admin/conversations/{conversation}").json()
    assert (shown["category"], shown["priority"]) == ("technical", "urgent")
    assert shown["correction"]["category"] == "technical"
    assert shown["classification"]["category"] == "billing"  # the AI's own row stays beside the correction
    assert tk.put(path, json={"priority": "low"}).json()["category"] == "technical"  # kept, priority moved
    assert rows(app_engine, inbox.tenant_id, "SELECT text, category, source FROM ai_examples") == [
        ("The app crashes when I log in", "technical", "correction")]
    # Learned from: the tenant's training is scheduled, and reads the correction among its examples.
    assert redis_client.get(pending_key(inbox.tenant_id)) is not None
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        learned, own = training.training_rows(conn, inbox.tenant_id)
    assert ("The app crashes when I log in", "technical") in learned and own == 1
    events = [e for e in feed(app_engine, inbox.tenant_id) if e["type"] == "message.classified"]
    assert len(events) == 2 and all(e["data"]["corrected"] is True for e in events)
    assert events[0]["data"]["classification"]["category"] == "technical"

    assert tk.put(path, json={"category": "astrology"}).status_code == 422
    assert tk.put(path, json={}).status_code == 422
    ours = reply(tk, conversation, {"text": "Try again now", "send": False}).json()["id"]
    assert tk.put(f"/v1/admin/messages/{ours}/classification", json={"priority": "low"}).status_code == 409


LONG = "x" * 65_537
HOSTILE_REPLIES = [
    {"text": LONG, "send": False}, {"text": "a\x00b", "send": False}, {"text": "   ", "send": False},
    {"text": 5, "send": False}, {"text": "ok", "send": "yes"}, {"text": "ok"}, {"send": False},
    {"text": "ok", "send": False, "html": "<p>\x00</p>"}, {"text": "ok", "send": False, "subject": ["a"]},
    {"text": "ok", "send": False, "draft_id": "not-a-uuid"}, {"text": "ok", "send": False, "extra": 1},
    {"text": {"nested": {"deeper": [1, 2, 3]}}, "send": False}, [], "text",
]


@pytest.mark.parametrize("body", HOSTILE_REPLIES)
def test_a_hostile_reply_is_refused_and_stores_nothing(tk: httpx.Client, app_engine: Engine, inbox: CreatedInbox,
                                                       body: Any) -> None:
    conversation = inbound(app_engine, inbox)
    answer = reply(tk, conversation, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid" and answer.json()["fields"]
    assert rows(app_engine, inbox.tenant_id, "SELECT id FROM messages WHERE direction = 'outbound'") == []


def test_hostile_bytes_headers_and_sizes_get_a_clear_4xx(tk: httpx.Client, app_engine: Engine,
                                                         inbox: CreatedInbox) -> None:
    conversation = inbound(app_engine, inbox)
    url = f"/v1/admin/conversations/{conversation}/messages"
    key = {"Idempotency-Key": "k-1", "Content-Type": "application/json"}
    surrogate = tk.post(url, content=b'{"text": "\\ud800", "send": false}', headers=key)
    assert (surrogate.status_code, surrogate.json()["error"]) == (400, "malformed_json")  # not Unicode: not JSON
    deep = tk.post(url, content=b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b', "send": false}', headers=key)
    assert deep.status_code in (400, 422)
    huge = tk.post(url, content=b'{"text": "' + b"y" * (3 * 1024 * 1024) + b'", "send": false}', headers=key)
    assert huge.status_code == 413
    assert tk.post(url, content=b"{not json", headers=key).status_code == 400
    headers: dict[str, Any]
    for headers in ({}, {"Idempotency-Key": "k" * 201}, {"Idempotency-Key": "a\tb"},
                    {"Idempotency-Key": "café".encode()}):
        answer = tk.post(url, json={"text": "ok", "send": False}, headers=headers)
        assert answer.status_code == 422 and "Idempotency-Key" in answer.json()["fields"], headers
    assert rows(app_engine, inbox.tenant_id, "SELECT id FROM messages WHERE direction = 'outbound'") == []


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "201"}, {"limit": "abc"}, {"status": "closed"}, {"inbox_id": "nope"},
    {"assignee": "a\x00b"}, {"assignee": "a" * 201}, {"updated_since": "yesterday"}, {"cursor": "a\x00"},
    {"cursor": "bm90LWEtY3Vyc29y"}, {"cursor": "=" * 300}, {"unknown": "1"},
])
def test_hostile_listing_queries_are_refused(tk: httpx.Client, inbox: CreatedInbox, params: dict[str, str]) -> None:
    answer = tk.get(f"/v1/admin/tenants/{inbox.tenant_id}/conversations", params=params)
    assert answer.status_code == 422, (params, answer.text)


@pytest.mark.parametrize(("path", "body"), [
    ("assign", {"assignee": "a" * 201}), ("assign", {"assignee": "\x00"}), ("assign", {"team_id": 5}),
    ("assign", {}), ("assign", {"team_id": None, "x": 1}),
])
def test_hostile_assignments_are_refused(tk: httpx.Client, app_engine: Engine, inbox: CreatedInbox, path: str,
                                         body: dict[str, Any]) -> None:
    conversation = inbound(app_engine, inbox)
    answer = tk.post(f"/v1/admin/conversations/{conversation}/{path}", json=body)
    assert answer.status_code == 422, answer.text
    assert tk.get(f"/v1/admin/conversations/{conversation}").json()["assignee"] is None


def test_hostile_draft_and_correction_bodies_are_refused(tk: httpx.Client, app_engine: Engine,
                                                        inbox: CreatedInbox) -> None:
    conversation = inbound(app_engine, inbox)
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        message = conn.execute(text("SELECT id FROM messages WHERE conversation_id = :c"),
                               {"c": conversation}).scalar_one()
        draft = conn.execute(text(
            "INSERT INTO ai_drafts (tenant_id, message_id, conversation_id, prompt_version, content, confidence, "
            "provider, model) VALUES (:t, :m, :c, 'v1', 'Hi', 0.5, 'local', 'm') RETURNING id"),
            {"t": inbox.tenant_id, "m": message, "c": conversation}).scalar_one()
    for body in ({"text": "\x00"}, {"text": LONG}, {"send": "no"}, {"text": ["a"]}):
        assert tk.post(f"/v1/admin/drafts/{draft}/accept", json=body).status_code == 422, body
    for body in ({"reason": "r" * 2_001}, {"reason": 7}, {"reason": "\x00"}):
        assert tk.post(f"/v1/admin/drafts/{draft}/reject", json=body).status_code == 422, body
    for body in ({"category": "Bad Category!"}, {"category": "\x00"}, {"priority": "whenever"}, {"priority": 1}):
        assert tk.put(f"/v1/admin/messages/{message}/classification", json=body).status_code == 422, body
    assert tk.get(f"/v1/admin/conversations/{conversation}/drafts").json()["items"][0]["status"] == "pending"
    assert rows(app_engine, inbox.tenant_id, "SELECT id FROM ai_corrections") == []


def test_an_operator_key_acts_on_any_tenant_and_unknown_ids_are_404(base: str, operator: Keyed,
                                                                    app_engine: Engine, inbox: CreatedInbox) -> None:
    conversation = inbound(app_engine, inbox)
    with client(base, operator) as op:
        answer = reply(op, conversation, {"text": "From the operator", "send": False})
        assert answer.status_code == 201 and answer.json()["author"] == "key:operator in tests"
        for path in (f"/v1/admin/conversations/{uuid.uuid4()}", f"/v1/admin/conversations/{uuid.uuid4()}/messages",
                     "/v1/admin/conversations/not-an-id"):
            assert op.get(path).status_code == 404
        assert op.post(f"/v1/admin/drafts/{uuid.uuid4()}/accept", json={}).status_code == 404


@pytest.mark.parametrize(("suffix", "params"), [
    ("messages", {"limit": "0"}), ("messages", {"limit": "1e9"}), ("messages", {"cursor": "%%%"}),
    ("messages", {"cursor": "bm9wZQ"}), ("messages", {"after": "1"}),
    ("drafts", {"limit": "-1"}), ("drafts", {"offset": "x"}), ("drafts", {"offset": "99999999999"}),
])
def test_hostile_thread_queries_are_refused(tk: httpx.Client, app_engine: Engine, inbox: CreatedInbox, suffix: str,
                                            params: dict[str, str]) -> None:
    conversation = inbound(app_engine, inbox)
    answer = tk.get(f"/v1/admin/conversations/{conversation}/{suffix}", params=params)
    assert answer.status_code == 422, (params, answer.text)


@pytest.mark.parametrize("path", ["assign", "resolve"])
def test_deeply_nested_and_oversized_bodies_elsewhere_are_4xx(tk: httpx.Client, app_engine: Engine,
                                                             inbox: CreatedInbox, path: str) -> None:
    conversation = inbound(app_engine, inbox)
    url = f"/v1/admin/conversations/{conversation}/{path}"
    headers = {"Content-Type": "application/json"}
    deep = tk.post(url, content=b'{"assignee": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", headers=headers)
    big = tk.post(url, content=b'{"assignee": "' + b"a" * 70_000 + b'"}', headers=headers)
    if path == "assign":
        assert deep.status_code in (400, 422) and big.status_code == 413
    else:  # resolve takes no body: whatever is sent is not read
        assert deep.status_code == big.status_code == 200
    assert tk.get(f"/v1/admin/conversations/{conversation}").json()["assignee"] is None


def test_the_send_message_actor_is_declared_on_the_outbound_queue(stack: dict[str, str]) -> None:
    """The job the API enqueues names an actor the fleet's workers declare, on a queue their broker consumes."""
    from workers.actors import outbound

    actor = outbound.send_message
    assert (actor.actor_name, actor.queue_name) == ("send_message", "outbound")
    assert "outbound" in outbound.broker.get_declared_queues()
    assert outbound.broker.get_actor("send_message") is actor


def test_erasing_the_sender_removes_the_example_made_of_their_message(tk: httpx.Client, app_engine: Engine,
                                                                      inbox: CreatedInbox) -> None:
    conversation = inbound(app_engine, inbox, email="erase-me@example.com", text_="My card 4111 was charged twice")
    message = tk.get(f"/v1/admin/conversations/{conversation}/messages").json()["items"][0]["id"]
    assert tk.put(f"/v1/admin/messages/{message}/classification", json={"category": "billing"}).status_code == 200
    assert len(rows(app_engine, inbox.tenant_id, "SELECT id FROM ai_examples")) == 1
    erased = tk.post(f"/v1/admin/tenants/{inbox.tenant_id}/erase-contact",
                     json={"identity": {"kind": "email", "value": "erase-me@example.com"}})
    assert erased.status_code == 200 and erased.json()["counts"]["examples"] == 1
    assert rows(app_engine, inbox.tenant_id, "SELECT id FROM ai_examples") == []
    assert rows(app_engine, inbox.tenant_id, "SELECT category FROM ai_corrections") == [("billing",)]  # no text
