"""Erasure of one person: afterwards no text or JSON column of any tenant table, and no Redis key, holds their
identities or what they wrote; others are untouched, counters still add up, and a second run changes nothing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines import assist
from pipelines.ai.local import LocalProvider
from pipelines.ingest import IngestPolicy, ingest_events
from pipelines.lifecycle import erasure, jobs
from tests.factories import deliver, new_inbox
from tests.processes import run_intake
from workers.cli.main import main
from workers.queues import NAMESPACE

ERIK = {"name": "Erik Svensson", "email": "erik.svensson@example.se", "phone": "+46701234567"}
ERIK_TEXTS = ("Min beställning 5512 har inte kommit", "Leveransadressen är Storgatan 12")
ANNA_TEXT = "Tilaukseni 7781 on myöhässä"
POLICY = IngestPolicy(reopen_window=timedelta(hours=72))


def send(app_engine: Engine, inbox: Any, external_id: str, body_text: str, **contact: str) -> Any:
    body = orjson.dumps({"id": external_id, "type": "message", "sent_at": "2026-11-20T09:30:00+02:00",
                         "text": body_text, "contact": contact, "metadata": {"note": body_text}})
    return deliver(app_engine, inbox, body, "application/json", headers={"webhook-id": f"wh-{external_id}"})


def needles() -> list[str]:
    return [ERIK["email"], ERIK["phone"], ERIK["phone"][1:], ERIK["name"].lower(), *(t.lower() for t in ERIK_TEXTS)]


def tenant_columns(admin_engine: Engine) -> list[tuple[str, str, str]]:
    """(table, column, type) of every text, JSON and bytea column of every table with a tenant_id."""
    with admin_engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text("""
            SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
            WHERE c.table_schema = 'public' AND c.data_type IN ('text', 'jsonb', 'json', 'bytea', 'ARRAY')
              AND EXISTS (SELECT 1 FROM information_schema.columns t WHERE t.table_schema = 'public'
                          AND t.table_name = c.table_name AND t.column_name IN ('tenant_id'))
            ORDER BY 1, 2"""))]


def traces(admin_engine: Engine, tenant: TenantId, redis_client: redis.Redis) -> list[str]:
    """Where any of the person's identities or texts still appear: table.column, or a Redis key."""
    found = []
    with admin_engine.connect() as conn:
        for table, column, kind in tenant_columns(admin_engine):
            value = f"lower(encode(\"{column}\", 'escape'))" if kind == "bytea" else f'lower("{column}"::text)'
            hit = conn.execute(text(
                f'SELECT count(*) FROM "{table}" WHERE tenant_id = :t AND EXISTS '
                f"(SELECT 1 FROM unnest(CAST(:n AS text[])) n WHERE strpos({value}, n) > 0)"),
                {"t": tenant, "n": needles()}).scalar_one()
            if hit:
                found.append(f"{table}.{column}")
    for key in redis_client.scan_iter("*"):
        values = redis_values(redis_client, key)
        blob = b" ".join(v for v in values if isinstance(v, bytes)).decode(errors="replace").lower()
        if any(n in blob for n in needles()):
            found.append(f"redis:{key.decode()}")
    return found


def redis_values(client: redis.Redis, key: bytes) -> list[Any]:
    kind = client.type(key)
    if kind == b"hash":
        return list(client.hvals(key))
    if kind == b"list":
        return list(client.lrange(key, 0, -1))
    if kind == b"zset":
        return list(client.zrange(key, 0, -1))
    if kind == b"set":
        return list(client.smembers(key))
    return [client.get(key)] if kind == b"string" else []


def counts(admin_engine: Engine, tenant: TenantId) -> dict[str, Any]:
    with admin_engine.connect() as conn:
        return dict(conn.execute(text("""
            SELECT (SELECT count(*) FROM contacts WHERE tenant_id = :t) AS contacts,
                   (SELECT count(*) FROM messages WHERE tenant_id = :t) AS messages,
                   (SELECT count(*) FROM conversations WHERE tenant_id = :t) AS conversations,
                   (SELECT sum(message_count) FROM conversations WHERE tenant_id = :t) AS counted,
                   (SELECT count(*) FROM audit_logs WHERE tenant_id = :t) AS audit_rows"""),
            {"t": tenant}).mappings().one())


def enqueue(client: redis.Redis, queue: str, tenant: TenantId, ids: list[uuid.UUID]) -> str:
    job_id = str(uuid.uuid4())
    body = orjson.dumps({"queue_name": queue, "actor_name": "x", "args": [str(tenant), [str(i) for i in ids]],
                         "kwargs": {}, "options": {"redis_message_id": job_id}, "message_id": job_id,
                         "message_timestamp": 0})
    client.hset(f"{NAMESPACE}:{queue}.msgs", job_id, body)
    client.rpush(f"{NAMESPACE}:{queue}", job_id)
    return job_id


def intake_json(*args: str) -> dict[str, Any]:
    result = run_intake(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_erasure_leaves_no_trace_of_the_person_and_nothing_else_changes(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    erik = [send(app_engine, inbox, f"e{n}", t, **ERIK) for n, t in enumerate(ERIK_TEXTS)]
    send(app_engine, inbox, "a1", ANNA_TEXT, email="anna@example.fi", name="Anna Virtanen")
    erik_messages = [m for r in erik for m in r.messages_created]
    with app_engine.begin() as conn:  # AI output about Erik, a stored event that failed, its ledger row
        bind_tenant(conn, tenant)
        conv = conn.execute(text("SELECT conversation_id FROM messages WHERE id = :m"), {"m": erik_messages[0]}).scalar()
        conn.execute(text(
            "INSERT INTO ai_classifications (tenant_id, message_id, prompt_version, category, priority, sentiment, "
            "language, confidence, reasoning, provider, model) VALUES (:t, :m, 'v1', 'shipping', 'high', 'negative', "
            "'sv', 0.9, :r, 'local', 'x')"), {"t": tenant, "m": erik_messages[0], "r": f"Quotes: {ERIK_TEXTS[0]}"})
        conn.execute(text(
            "INSERT INTO ai_drafts (tenant_id, message_id, conversation_id, prompt_version, content, confidence, "
            "provider, model) VALUES (:t, :m, :c, 'v1', :d, 0.8, 'local', 'x')"),
            {"t": tenant, "m": erik_messages[0], "c": conv, "d": f"Hej {ERIK['name']}, order 5512 ships today."})
        failed = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body, status, error) "
            "VALUES (:t, :i, 'api', 'broken', :b, 'failed', :e) RETURNING id"),
            {"t": tenant, "i": inbox.id, "b": orjson.dumps({"contact": {"phone": ERIK["phone"]}}),
             "e": f"bad payload from {ERIK['email']}"}).scalar_one()
        conn.execute(text(
            "INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, ref_id, exception_type, "
            "exception_message) VALUES (:t, 'ingest', 'ingest_events', :m, CAST(:msg AS jsonb), :r, 'ValueError', :e)"),
            {"t": tenant, "m": (job := str(uuid.uuid4())), "r": f"['{failed}']", "e": f"no route for {ERIK['email']}",
             "msg": json.dumps({"queue_name": "ingest", "actor_name": "ingest_events", "message_id": job,
                                  "args": [str(tenant), [str(failed)]], "kwargs": {"retry_failed": True},
                                  "options": {}, "message_timestamp": 0})})
    anna_job = enqueue(redis_client, "ai", tenant, [*erik_messages, uuid.UUID(int=7)])
    erik_job = enqueue(redis_client, "ingest", tenant, [failed])
    before = counts(admin_engine, tenant)
    assert len(traces(admin_engine, tenant, redis_client)) >= 5

    erased = intake_json("contact", "erase", "--tenant", str(tenant), "--identity", f"email:{ERIK['email'].upper()}")
    assert erased["already_erased"] is False and erased["counts"]["messages"] == 2 and erased["jobs"] == 1
    assert traces(admin_engine, tenant, redis_client) == []
    # The failed event was tried again and still fails: it stays, with its ledger row and job, without Erik.
    assert redis_client.hget(f"{NAMESPACE}:ingest.msgs", erik_job) is not None
    assert erased["counts"]["backlog_failed"] == 1
    rewritten = redis_client.hget(f"{NAMESPACE}:ai.msgs", anna_job)
    assert rewritten is not None and orjson.loads(rewritten)["args"][1] == [str(uuid.UUID(int=7))]
    assert jobs.forget_jobs(redis_client, NAMESPACE, str(tenant)) == 2  # no worker of a later test should run them

    after = counts(admin_engine, tenant)
    assert after == {**before, "audit_rows": before["audit_rows"] + 1}
    assert after["counted"] == after["messages"]
    with admin_engine.connect() as conn:
        anna = conn.execute(text("SELECT content FROM messages WHERE tenant_id = :t AND external_id = 'a1'"),
                            {"t": tenant}).scalar_one()
        audit = conn.execute(text("SELECT action, after FROM audit_logs WHERE tenant_id = :t"), {"t": tenant}).one()
        event = conn.execute(text("SELECT status, body FROM inbound_events WHERE id = :id"), {"id": failed}).one()
        ledger = conn.execute(text("SELECT exception_message, status FROM job_failures WHERE tenant_id = :t "
                                   "AND message_id = :m"), {"t": tenant, "m": job}).one()
    assert anna == ANNA_TEXT
    assert (event.status, orjson.loads(bytes(event.body))) == ("failed", {"contact": {"phone": "[erased]"}})
    assert (ledger.exception_message, ledger.status) == ("no route for [erased]", "dead")
    assert audit.action == "contact.erase" and ERIK["email"] not in json.dumps(audit.after)

    again = intake_json("contact", "erase", "--tenant", str(tenant), "--contact", erased["contact_id"])
    assert again["already_erased"] is True and not any(again["counts"].values())
    assert counts(admin_engine, tenant) == after

    # The same person writing again is a new contact, with nothing of the old one.
    send(app_engine, inbox, "e9", "Hej igen", **ERIK)
    with admin_engine.connect() as conn:
        newest = conn.execute(text("SELECT contact_id FROM messages WHERE tenant_id = :t AND external_id = 'e9'"),
                              {"t": tenant}).scalar_one()
    assert str(newest) != erased["contact_id"]


def erase(app_engine: Engine, tenant: TenantId, email: str) -> erasure.Erasure:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        found = erasure.find_contact(conn, tenant, identity=("email", email))
        assert found is not None
        return erasure.erase_contact(conn, tenant, found, actor="cli:test", policy=POLICY)


def test_a_message_stored_while_the_person_is_erased_is_erased_too(
    app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    """An ingest batch stores the person's next message while the erasure starts: once both have committed,
    nothing they wrote is left."""
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    send(app_engine, inbox, "e1", ERIK_TEXTS[0], **ERIK)
    body = orjson.dumps({"id": "e2", "type": "message", "sent_at": "2026-11-20T09:31:00+02:00",
                         "text": ERIK_TEXTS[1], "contact": {"email": ERIK["email"]}})
    done: dict[str, erasure.Erasure] = {}
    with app_engine.connect() as batch:
        batch.begin()
        bind_tenant(batch, tenant)
        event = batch.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body) "
            "VALUES (:t, :i, 'api', 'wh-e2', 'application/json', CAST(:h AS jsonb), :b) RETURNING id"),
            {"t": tenant, "i": inbox.id, "b": body,
             "h": json.dumps({"content-type": "application/json", "webhook-id": "wh-e2"})}).scalar_one()
        stored = ingest_events(batch, tenant, [event], IngestPolicy(reopen_window=timedelta(hours=72)))
        assert len(stored.messages_created) == 1
        worker = threading.Thread(target=lambda: done.update(result=erase(app_engine, tenant, ERIK["email"])))
        worker.start()
        deadline = time.monotonic() + 30
        while worker.is_alive() and time.monotonic() < deadline:  # until the erasure waits for the batch
            with admin_engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                     "AND NOT granted")).scalar_one():
                    break
            time.sleep(0.02)
        batch.commit()
    worker.join(30)
    assert done["result"].counts["messages"] == 2
    assert traces(admin_engine, tenant, redis_client) == []


def test_a_sender_cannot_mark_its_own_message_as_erased_already(
    app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    """The `api` channel keeps the sender's metadata as given, so it may equal the erasure's own marker."""
    inbox = new_inbox(app_engine, "api")
    body = orjson.dumps({"id": "e1", "type": "message", "sent_at": "2026-11-20T09:30:00+02:00",
                         "text": ERIK_TEXTS[0], "contact": {"email": ERIK["email"]}, "metadata": {"erased": True}})
    deliver(app_engine, inbox, body, "application/json", headers={"webhook-id": "wh-e1"})
    assert erase(app_engine, inbox.tenant_id, ERIK["email"]).counts["messages"] == 1
    assert traces(admin_engine, inbox.tenant_id, redis_client) == []


def test_ai_results_that_arrive_after_the_erasure_are_not_stored(
    app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    """An `ai` job read the message, then the person was erased while the provider thought."""
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    sent = send(app_engine, inbox, "e1", ERIK_TEXTS[1], **ERIK)

    def read(fn: Any) -> Any:
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            return fn(conn)

    (ctx,) = read(lambda conn: assist.load(conn, tenant, sent.messages_created))
    results = assist.think(read, tenant, ctx, LocalProvider(get_settings().embedding_dim))
    assert results.classification is not None and results.draft is not None
    erase(app_engine, tenant, ERIK["email"])
    assert read(lambda conn: assist.store(conn, tenant, ctx, results, {})) == {"classification": False, "draft": False}
    assert traces(admin_engine, tenant, redis_client) == []


def test_erasure_reaches_form_bodies_and_the_audit_rows_of_the_persons_merges(
    app_engine: Engine, admin_engine: Engine,
) -> None:
    """A form-encoded delivery that failed writes the address as `%40`; a merge's audit row lists identities
    too short to search for (a Telegram id of a few digits)."""
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    send(app_engine, inbox, "e1", ERIK_TEXTS[0], **ERIK)
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        contact = conn.execute(text("SELECT contact_id FROM messages WHERE external_id = 'e1'")).scalar_one()
        form = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, body, status) "
            "VALUES (:t, :i, 'mailgun', 'form', 'application/x-www-form-urlencoded', :b, 'failed') RETURNING id"),
            {"t": tenant, "i": inbox.id, "b": b"sender=erik.svensson%40example.se&stripped-text=Storgatan+12"},
        ).scalar_one()
        conn.execute(text(
            "INSERT INTO audit_logs (tenant_id, actor, action, subject_type, subject_id, details) "
            "VALUES (:t, 'intake.ingest', 'contact.merged', 'contact', :c, CAST(:d AS jsonb))"),
            {"t": tenant, "c": str(contact), "d": json.dumps({"moved_identities": [["telegram", "4242"]]})})
    erase(app_engine, tenant, ERIK["email"])
    with admin_engine.connect() as conn:
        body, status = conn.execute(text("SELECT body, status FROM inbound_events WHERE id = :id"), {"id": form}).one()
        merges = conn.execute(text("SELECT details FROM audit_logs WHERE tenant_id = :t AND action = 'contact.merged'"),
                              {"t": tenant}).scalars().all()
    # Tried again, it still fails: it stays for its ledger, redacted of the person, `%40` and all.
    assert (bytes(body), status) == (b"sender=[erased]&stripped-text=Storgatan+12", "failed")
    assert merges == [{}]
    again = erase_by_contact(app_engine, tenant, contact)
    assert again.already_erased and not any(again.counts.values())


def erase_by_contact(app_engine: Engine, tenant: TenantId, contact: uuid.UUID) -> erasure.Erasure:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        return erasure.erase_contact(conn, tenant, contact, actor="cli:test", policy=POLICY)


def test_forgetting_a_deleted_tenants_jobs_keeps_other_tenants_jobs(redis_client: redis.Redis) -> None:
    gone, kept = TenantId(uuid.uuid4()), TenantId(uuid.uuid4())
    enqueue(redis_client, "ingest", gone, [uuid.uuid4()])
    other = enqueue(redis_client, "ingest", kept, [uuid.uuid4()])
    redis_client.set(f"intake:ratelimit:{gone}", 1)
    assert jobs.forget_jobs(redis_client, NAMESPACE, str(gone)) == 1
    assert jobs.forget_tenant_keys(redis_client, str(gone)) == 1
    assert redis_client.hget(f"{NAMESPACE}:ingest.msgs", other) is not None
    assert all(str(gone) not in str(v) for v in redis_client.hvals(f"{NAMESPACE}:ingest.msgs"))
    assert jobs.forget_jobs(redis_client, NAMESPACE, str(kept)) == 1


TENANT = str(uuid.uuid4())


@pytest.mark.parametrize(("args", "needle"), [
    (["contact", "erase", "--tenant", "not-a-uuid", "--contact", TENANT], "--tenant must be a UUID"),
    (["contact", "erase", "--tenant", TENANT + "\x00", "--contact", TENANT], "--tenant must be at most"),
    (["contact", "erase", "--tenant", "9" * 100_000, "--contact", TENANT], "--tenant must be at most"),
    (["contact", "erase", "--tenant", TENANT], "exactly one of --contact"),
    (["contact", "erase", "--tenant", TENANT, "--contact", TENANT, "--identity", "email:a@b.se"], "exactly one"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "fax:123"], "KIND:VALUE"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "nocolon"], "KIND:VALUE"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "email:"], "1-1024 characters"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "email:a\x00@b.se"], "without NUL"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "external:" + "x" * 5000], "at most 1024"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "phone:call me"], "not a phone number"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "email:not-an-address"], "not an email"),
    (["contact", "erase", "--tenant", TENANT, "--identity", "email:\u202ea@b.se"], "not an email"),
    (["contact", "erase", "--tenant", TENANT, "--contact", TENANT], "no tenant"),
])
def test_hostile_erase_input_is_one_clear_line(stack: dict[str, str], args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert result.stdout == ""


def test_an_edit_that_arrives_after_the_erasure_brings_no_words_back(
    app_engine: Engine, admin_engine: Engine,
) -> None:
    """Telegram sends edits of old messages: one of an erased person's message changes nothing, and it
    makes no new contact either (the message it edits is there, erased)."""
    inbox = new_inbox(app_engine, "telegram")
    tenant = inbox.tenant_id

    def update(kind: str, update_id: int, words: str) -> bytes:
        return orjson.dumps({"update_id": update_id, kind: {
            "message_id": 7, "date": 1700000000, "edit_date": 1700000100, "chat": {"id": 4242, "type": "private"},
            "from": {"id": 4242, "first_name": "Erik"}, "text": words}})

    deliver(app_engine, inbox, update("message", 1, ERIK_TEXTS[0]), "application/json")
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        found = erasure.find_contact(conn, tenant, identity=("telegram", "4242"))
        assert found is not None
        erasure.erase_contact(conn, tenant, found, actor="cli:test", policy=POLICY)
    before = counts(admin_engine, tenant)
    deliver(app_engine, inbox, update("edited_message", 2, ERIK_TEXTS[1]), "application/json")
    assert counts(admin_engine, tenant) == before
    with admin_engine.connect() as conn:
        stored = conn.execute(text("SELECT content FROM messages WHERE tenant_id = :t"), {"t": tenant}).scalars().all()
    assert stored == [""]
