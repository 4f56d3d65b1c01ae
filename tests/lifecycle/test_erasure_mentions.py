"""Erasure and other people's words: a waiting message that names the person is stored first, never lost, and
afterwards no column of any table (found from the catalog, so a new table is searched too) and no Redis key
holds the person's identities, name or what they wrote."""

from __future__ import annotations

import json
import os
import random
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.ai import examples, learned, training
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox, create_inbox
from pipelines.lifecycle import jobs
from tests.factories import deliver, new_inbox
from tests.processes import run_intake, web_server
from tests.webhooks import sign
from workers.queues import NAMESPACE
from workers.training import pending_key

# Separators people write phone numbers with; the search takes them out and looks for the national digits.
PHONE_SEPARATORS = r"[[:space:]().+/-]"


@dataclass(frozen=True)
class Someone:
    """A person whose every value is unique in the database, so a search over every row finds only them."""

    name: str
    email: str
    phone: str  # E.164
    national: str  # the phone as written at home
    external_id: str
    marker: str  # in each message they write

    @classmethod
    def new(cls, first: str) -> Someone:
        tag = "".join(random.choices(string.ascii_lowercase, k=8))
        digits = "".join(random.choices(string.digits, k=7))
        return cls(name=f"{first} Okonkwo{tag}", email=f"{first.lower()}.{tag}@example.org",
                   phone=f"+4670{digits}", national=f"070-{digits[:3]} {digits[3:5]} {digits[5:]}",
                   external_id=f"crm-{tag}", marker=f"marker-{tag}")

    def contact(self) -> dict[str, str]:
        return {"name": self.name, "email": self.email, "phone": self.phone, "external_id": self.external_id}

    def likes(self) -> list[str]:
        return [f"%{v.lower()}%" for v in (self.name, self.email, self.phone, self.external_id, self.marker)]

    def digits(self) -> str:
        return f"%{self.phone.removeprefix('+46')}%"  # the national significant number, in any format


def api_body(external_id: str, words: str, contact: dict[str, str], **extra: Any) -> bytes:
    return orjson.dumps({"id": external_id, "type": "message", "sent_at": "2026-11-20T09:30:00+02:00",
                         "text": words, "contact": contact, **extra})


def intake(*args: str) -> dict[str, Any]:
    result = run_intake(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def one(engine: Engine, tenant: TenantId, sql: str, **params: Any) -> Any:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return conn.execute(text(sql), params).one()


# -- every column of every table, and every Redis key ------------------------------------------------------
COLUMNS = text("""
SELECT c.relname AS table_name, a.attname AS column_name, t.typname AS type_name
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND t.typname IN ('text', 'varchar', 'bpchar', 'json', 'jsonb', 'bytea', '_text', '_varchar')
ORDER BY 1, 2
""")


def found_anywhere(admin_engine: Engine, redis_client: redis.Redis, person: Someone) -> list[str]:
    """Every table.column (any table, any row: the owner's connection sees past row-level security) and Redis
    key where one of the person's values is written, the phone in any format."""
    found = []
    with admin_engine.connect() as conn:
        columns = conn.execute(COLUMNS).all()
        assert len(columns) > 50  # the catalog, not a list of names this test happens to know
        for table, column, kind in columns:
            value = f'encode("{column}", \'escape\')' if kind == "bytea" else f'CAST("{column}" AS text)'
            hits = conn.execute(text(
                f'SELECT count(*) FROM "{table}" WHERE lower({value}) LIKE ANY(CAST(:likes AS text[])) '
                f"OR regexp_replace({value}, :separators, '', 'g') LIKE :digits"),
                {"likes": person.likes(), "separators": PHONE_SEPARATORS, "digits": person.digits()}).scalar_one()
            if hits:
                found.append(f"{table}.{column}")
    needles = [like.strip("%") for like in person.likes()]
    for key in redis_client.scan_iter("*"):
        blob = b" ".join(redis_values(redis_client, key)).decode(errors="replace").lower()
        if any(n in blob for n in needles) or person.phone[3:] in blob:
            found.append(f"redis:{key.decode()}")
    return found


def redis_values(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key)
    values: list[Any] = []
    if kind == b"hash":
        values = [*client.hkeys(key), *client.hvals(key)]
    elif kind == b"list":
        values = client.lrange(key, 0, -1)
    elif kind == b"zset":
        values = client.zrange(key, 0, -1)
    elif kind == b"set":
        values = list(client.smembers(key))
    elif kind == b"string":
        values = [client.get(key)]
    return [v for v in values if isinstance(v, bytes)]


# -- the backlog ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ingress(stack: dict[str, str]) -> Iterator[str]:
    """The web ingress and no worker: what it acknowledges waits (`received`), as in a backlog."""
    with web_server() as base:
        yield base


def post(base: str, inbox: CreatedInbox, body: bytes) -> None:
    url = f"{base}/v1/webhooks/api/{inbox.id}"
    headers, signed = sign("api", inbox.secrets, url, body, "application/json", webhook_id=f"wh-{uuid.uuid4()}")
    assert httpx.post(url, content=signed, headers=headers, timeout=30).status_code == 200


def test_a_waiting_message_that_names_the_person_is_stored_without_them(
    ingress: str, app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    """The report's case: Alice's message naming Dave waits for a worker; Dave is erased; Alice's message is
    stored, with Dave written over, and her event is processed because it stored it."""
    dave, alice = Someone.new("Dave"), Someone.new("Alice")
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    deliver(app_engine, inbox, api_body("d1", f"{dave.marker}: my order is late", dave.contact()), "application/json",
            headers={"webhook-id": "wh-d1"})
    post(ingress, inbox, api_body("a1", f"my colleague {dave.email} ({dave.national}) said it is paid",
                                  {"email": alice.email}))
    post(ingress, inbox, api_body("d2", f"{dave.marker}: still waiting", {"email": dave.email}))
    waiting = one(admin_engine, tenant, "SELECT count(*) AS n FROM inbound_events WHERE tenant_id = :t "
                  "AND status = 'received'", t=tenant)
    assert waiting.n == 2

    erased = intake("contact", "erase", "--tenant", str(tenant), "--identity", f"email:{dave.email}")
    assert erased["counts"]["backlog_stored"] == 2 and erased["counts"]["messages"] == 2

    stored = one(app_engine, tenant, """
        SELECT m.id, m.content, e.status, octet_length(e.body) AS body FROM messages m
        JOIN inbound_events e ON e.id = m.event_id WHERE m.external_id = 'a1'""")
    assert stored.content == "my colleague [erased] ([erased]) said it is paid"
    assert (stored.status, stored.body) == ("processed", 0)  # the delivery no longer holds Dave either
    dave_rows = one(app_engine, tenant, "SELECT count(*) AS n, max(content) AS text FROM messages "
                    "WHERE external_id IN ('d1', 'd2')")
    assert (dave_rows.n, dave_rows.text) == (2, "")
    # The AI job of Alice's message is sent, as the ingest worker would have sent it.
    queued = [orjson.loads(v) for v in redis_client.hvals(f"{NAMESPACE}:ai.msgs")]
    assert any(str(stored.id) in job["args"][1] for job in queued if job["args"][0] == str(tenant))
    assert found_anywhere(admin_engine, redis_client, dave) == []
    jobs.forget_jobs(redis_client, NAMESPACE, str(tenant))  # no worker of a later test should run them


def test_an_identity_nobody_has_yet_is_still_written_over_in_the_backlog(
    ingress: str, app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    """Erasing by an identity no contact has (the person never wrote) still stores the waiting messages that
    name it, redacted."""
    dave, alice = Someone.new("Dave"), Someone.new("Alice")
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    post(ingress, inbox, api_body("a1", f"please cc {dave.email}", {"email": alice.email}))
    erased = intake("contact", "erase", "--tenant", str(tenant), "--identity", f"email:{dave.email}")
    assert erased["contact_id"] is None and erased["already_erased"] is False
    assert one(app_engine, tenant, "SELECT content FROM messages WHERE external_id = 'a1'").content == \
        "please cc [erased]"
    again = intake("contact", "erase", "--tenant", str(tenant), "--identity", f"email:{dave.email}")
    assert again["already_erased"] is True
    jobs.forget_jobs(redis_client, NAMESPACE, str(tenant))


# -- every column of every table ----------------------------------------------------------------------
def test_no_column_of_any_table_keeps_the_person_and_others_keep_their_messages(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    dave, alice = Someone.new("Dave"), Someone.new("Alice")
    chat = new_inbox(app_engine, "api")
    tenant = chat.tenant_id
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        mail = create_inbox(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), tenant, "postmark")
    deliver(app_engine, chat, api_body("d1", f"{dave.marker}: I am {dave.name}", dave.contact(),
                                       metadata={"note": dave.marker}), "application/json",
            headers={"webhook-id": "wh-d1"})
    # Alice names Dave every way people do: in her text, subject, HTML and metadata, and in an email's quote.
    alice_words = (f"Ask {dave.name.upper()} ({dave.email}, tel {dave.national}, {dave.phone.removeprefix('+')}); "
                   f"his CRM id is {dave.external_id}")
    chat_result: Any = deliver(app_engine, chat, api_body(
        "a1", alice_words, {"email": alice.email, "name": alice.name}, subject=f"About {dave.name}",
        html=f"<p>Ask <b>{dave.name}</b></p>", metadata={"cc": dave.email, "numbers": [int(dave.phone[1:])]}),
        "application/json", headers={"webhook-id": "wh-a1"})
    (alice_message,) = chat_result.messages_created
    quoted = f"Thanks!\n\nOn Friday {dave.name} <{dave.email}> wrote:\n> {dave.marker} call me at {dave.national}"
    deliver(app_engine, mail, orjson.dumps({
        "FromFull": {"Email": alice.email, "Name": alice.name}, "MessageID": "pm-a2", "Subject": "Re: order",
        "Date": "Fri, 20 Nov 2026 10:00:00 +0000", "TextBody": quoted, "StrippedTextReply": "Thanks!",
        "ToFull": [{"Email": "support@help.example.com"}], "CcFull": [{"Email": dave.email, "Name": dave.name}],
        "Headers": []}), "application/json", headers={"authorization": "Basic x"})
    with app_engine.begin() as conn:  # AI output, a failed delivery and its ledger row, an audit row: about Dave
        bind_tenant(conn, tenant)
        conversation = conn.execute(text("SELECT conversation_id FROM messages WHERE id = :m"),
                                    {"m": alice_message}).scalar_one()
        conn.execute(text(
            "INSERT INTO ai_classifications (tenant_id, message_id, prompt_version, category, priority, sentiment, "
            "language, confidence, reasoning, provider, model) VALUES (:t, :m, 'v1', 'billing', 'normal', "
            "'neutral', 'en', 0.9, :r, 'local', 'x')"),
            {"t": tenant, "m": alice_message, "r": f"Mentions {dave.email} and {dave.name}"})
        conn.execute(text(
            "INSERT INTO ai_drafts (tenant_id, message_id, conversation_id, prompt_version, content, confidence, "
            "provider, model) VALUES (:t, :m, :c, 'v1', :d, 0.8, 'local', 'x')"),
            {"t": tenant, "m": alice_message, "c": conversation, "d": f"Hi Alice, I will ask {dave.name}."})
        failed = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, body, status, error) "
            "VALUES (:t, :i, 'api', 'broken', 'application/json', :b, 'failed', :e) RETURNING id"),
            {"t": tenant, "i": chat.id, "b": orjson.dumps({"text": f"for {dave.name}", "contact": dave.national}),
             "e": f"no contact in {dave.email}"}).scalar_one()
        job = str(uuid.uuid4())
        conn.execute(text(
            "INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, ref_id, exception_type, "
            "exception_message, traceback) VALUES (:t, 'ingest', 'ingest_events', :m, CAST(:msg AS jsonb), :r, "
            "'ValueError', :e, :tb)"),
            {"t": tenant, "m": job, "r": f"['{failed}']", "e": f"no contact in {dave.email}",
             "tb": f'ValueError: "{dave.phone}"', "msg": json.dumps({
                 "queue_name": "ingest", "actor_name": "ingest_events", "message_id": job, "options": {},
                 "args": [str(tenant), [str(failed)]], "kwargs": {"retry_failed": True}, "message_timestamp": 0})})
        conn.execute(text(
            "INSERT INTO audit_logs (tenant_id, actor, action, subject_type, subject_id, details) "
            "VALUES (:t, 'key:ops', 'note.added', 'conversation', :c, CAST(:d AS jsonb))"),
            {"t": tenant, "c": str(conversation), "d": json.dumps({"note": f"{dave.name} called, {dave.national}"})})
    # A dead letter keeps its last failure's traceback in its options: text that may quote anyone.
    dead = str(uuid.uuid4())
    redis_client.hset(f"{NAMESPACE}:ingest.XQ.msgs", dead, orjson.dumps({
        "queue_name": "ingest", "actor_name": "ingest_events", "args": [str(tenant), [str(uuid.uuid4())]],
        "kwargs": {}, "options": {"traceback": f"ValueError: no contact {dave.email}"}, "message_id": dead,
        "message_timestamp": 0}))
    redis_client.zadd(f"{NAMESPACE}:ingest.XQ", {dead: 0})
    before = found_anywhere(admin_engine, redis_client, dave)
    assert {"messages.content", "messages.metadata", "messages.subject", "messages.content_html",
            "messages.quoted_text", "inbound_events.body", "ai_classifications.reasoning", "ai_drafts.content",
            "job_failures.exception_message", "audit_logs.details", "contact_identities.value",
            f"redis:{NAMESPACE}:ingest.XQ.msgs"} <= set(before)

    erased = intake("contact", "erase", "--tenant", str(tenant), "--identity", f"phone:{dave.phone}")
    assert erased["already_erased"] is False

    assert found_anywhere(admin_engine, redis_client, dave) == []
    kept = one(app_engine, tenant, "SELECT content, subject, content_html, metadata FROM messages WHERE id = :m",
               m=alice_message)
    assert kept.content == "Ask [erased] ([erased], tel [erased], [erased]); his CRM id is [erased]"
    assert (kept.subject, kept.content_html) == ("About [erased]", "<p>Ask <b>[erased]</b></p>")
    assert (kept.metadata["cc"], kept.metadata["numbers"]) == ("[erased]", ["[erased]"])
    event = one(app_engine, tenant, "SELECT status, error FROM inbound_events WHERE id = :e", e=failed)
    assert event.status == "failed"  # tried again, still failing: kept for its ledger, redacted
    ledger = one(app_engine, tenant, "SELECT exception_message, status FROM job_failures WHERE message_id = :m", m=job)
    assert (ledger.exception_message, ledger.status) == ("no contact in [erased]", "dead")
    assert one(app_engine, tenant, "SELECT count(*) AS n FROM messages").n == 3  # nobody's message is gone
    letter = orjson.loads(redis_client.hget(f"{NAMESPACE}:ingest.XQ.msgs", dead) or b"{}")
    assert letter["options"]["traceback"] == "ValueError: no contact [erased]"
    again = intake("contact", "erase", "--tenant", str(tenant), "--contact", erased["contact_id"])
    assert again["already_erased"] is True
    jobs.forget_jobs(redis_client, NAMESPACE, str(tenant))


def test_another_tenant_that_mentions_the_same_address_is_not_touched(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    """An erasure is one tenant's: another tenant's customer who writes the same address keeps their words."""
    dave, alice = Someone.new("Dave"), Someone.new("Alice")
    ours, theirs = new_inbox(app_engine, "api"), new_inbox(app_engine, "api")
    deliver(app_engine, ours, api_body("d1", "hello", dave.contact()), "application/json", headers={"webhook-id": "w1"})
    words = f"forwarding to {dave.email} and {dave.national}"
    deliver(app_engine, theirs, api_body("a1", words, {"email": alice.email}), "application/json",
            headers={"webhook-id": "w2"})
    erased = intake("contact", "erase", "--tenant", str(ours.tenant_id), "--identity", f"email:{dave.email}")
    assert erased["already_erased"] is False
    assert one(app_engine, theirs.tenant_id, "SELECT content FROM messages").content == words


# -- what the tenant's AI learned -----------------------------------------------------------------------
def learned_terms(app_engine: Engine, tenant: TenantId) -> set[str]:
    """Every term of every classifier the tenant has: the words its examples taught it."""
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        models = conn.execute(text("SELECT model FROM ai_models")).scalars().all()
    return {term for data in models for term in learned.TenantModel.from_bytes(bytes(data)).vocabulary}


def test_a_classifier_that_learned_the_persons_words_goes_and_is_trained_again_without_them(
    stack: dict[str, str], app_engine: Engine, redis_client: redis.Redis,
) -> None:
    """A model's vocabulary holds its examples' words (compressed, so no search of the columns finds them): an
    erasure that redacts or deletes those examples drops the tenant's models and schedules a new training."""
    dave = Someone.new("Dave")
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    deliver(app_engine, inbox, api_body("d1", "hello", dave.contact()), "application/json",
            headers={"webhook-id": "wh-d1"})
    surname = dave.name.split()[1].lower()
    taught = [(f"please ask {dave.name} about my refund", "billing"), (f"{dave.name} charged me twice", "billing"),
              ("the parcel never came", "shipping"), ("my package is lost in transit", "shipping"),
              ("the courier missed my house", "shipping"), ("refund the double charge please", "billing")]
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        examples.import_examples(conn, tenant, [examples.Example(t, c, i) for i, (t, c) in enumerate(taught)],
                                 create_categories=False, actor=audit.Actor("tests"))
        training.train_tenant(conn, tenant)
        training.train_tenant(conn, tenant)  # two versions, both taught his name
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        held = training.latest(conn, tenant)  # as an AI process holds the model it classifies with
    assert held is not None and f"w {surname}" in held.model.vocabulary
    assert f"w {surname}" in learned_terms(app_engine, tenant)

    erased = intake("contact", "erase", "--tenant", str(tenant), "--identity", f"email:{dave.email}")
    assert erased["counts"]["models"] == 2
    assert learned_terms(app_engine, tenant) == set()
    assert redis_client.get(pending_key(tenant)) is not None  # trained again, from the examples left
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        training.train_tenant(conn, tenant)
        again = training.train_tenant(conn, tenant)
        now = training.latest(conn, tenant)
    # Numbered afresh, as the dropped ones were: a process that held the old version 2 reads the new one.
    assert again.version == held.version == 2
    assert now is not None and not any(surname in term for term in now.model.vocabulary)
    assert not any(surname in term for term in learned_terms(app_engine, tenant))
    jobs.forget_jobs(redis_client, NAMESPACE, str(tenant))
    redis_client.delete(pending_key(tenant))


def test_an_identity_spelled_inside_a_sealed_secret_leaves_the_secret_whole(
    stack: dict[str, str], app_engine: Engine, redis_client: redis.Redis,
) -> None:
    """Ciphertext is not anyone's words: an external id that happens to appear inside a webhook endpoint's sealed
    secret (any id a CRM chose may) is redacted everywhere else, and the secret still opens."""
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    box = SecretBox(os.environ["INTAKE_SECRET_KEY"])
    sealed = box.seal({"secret": "whsec_" + "A" * 32})
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("INSERT INTO webhook_endpoints (tenant_id, url, secret, previous_secret) "
                          "VALUES (:t, 'https://93.184.216.34/hook', :s, :s)"), {"t": tenant, "s": sealed})
    chance = sealed[20:40]
    deliver(app_engine, inbox, api_body("c1", f"my CRM id is {chance}", {"external_id": chance}), "application/json",
            headers={"webhook-id": "wh-c1"})
    erased = intake("contact", "erase", "--tenant", str(tenant), "--identity", f"external:{chance}")
    assert erased["already_erased"] is False
    kept = one(app_engine, tenant, "SELECT secret, previous_secret FROM webhook_endpoints")
    assert (kept.secret, kept.previous_secret) == (sealed, sealed)
    assert box.open(kept.secret) == {"secret": "whsec_" + "A" * 32}
    jobs.forget_jobs(redis_client, NAMESPACE, str(tenant))
