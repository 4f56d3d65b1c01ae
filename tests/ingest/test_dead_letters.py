"""The failure ledger and `intake dlq`, with real worker processes, Redis and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import orjson
import redis
from sqlalchemy import Engine, Row, text

from db.tenancy import bind_tenant
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.processes import intake_process, run_intake, wait_for, worker

WORKER_ENV = {"INTAKE_JOB_MIN_BACKOFF_MS": "100", "INTAKE_JOB_MAX_BACKOFF_MS": "500"}


def corrupt_events(engine: Engine, inbox: CreatedInbox, count: int) -> list[uuid.UUID]:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return [conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body) "
            "VALUES (:t, :i, 'api', :k, 'application/json', '{}', :b) RETURNING id"),
            {"t": inbox.tenant_id, "i": inbox.id, "k": f"corrupt-{n}", "b": b'{"id": "x", "truncat'}).scalar_one()
            for n in range(count)]


def repair(engine: Engine, inbox: CreatedInbox, events: list[uuid.UUID]) -> None:
    """What an operator does after fixing the cause: here, restoring the bodies."""
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        for n, event_id in enumerate(events):
            body = orjson.dumps({"id": f"repaired-{n}", "type": "message", "sent_at": "2026-11-20T10:00:00Z",
                                 "text": f"message {n}", "contact": {"external_id": f"cust-{n % 7}"}})
            conn.execute(text("UPDATE inbound_events SET body = :b, headers = CAST(:h AS jsonb) WHERE id = :id"),
                         {"b": body, "h": json.dumps({"content-type": "application/json",
                                                      "webhook-id": f"wh-{n}"}), "id": event_id})


def ledger_rows(admin_engine: Engine, tenant: uuid.UUID) -> list[dict[str, object]]:
    with admin_engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT id, actor, queue, exception_type, exception_message, traceback, attempts, status, message, "
            "message_id "
            "FROM job_failures WHERE tenant_id = :t"), {"t": tenant}).mappings()]


def intake_json(*args: str, process: bool = False) -> dict[str, object]:
    """`intake ARGS --json`, which must succeed; in a process of its own when `process` (commands run at the same
    moment: two operators are two processes, and the test process runs one command at a time)."""
    result = (intake_process if process else run_intake)(*args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def event_statuses(engine: Engine, inbox: CreatedInbox) -> dict[str, int]:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return dict(conn.execute(text("SELECT status, count(*) FROM inbound_events GROUP BY 1")).all())


def test_events_set_aside_are_recorded_once_and_replay_once_after_the_fix(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis
) -> None:
    from workers.actors import ingest_events

    inbox = new_inbox(app_engine, "api")
    events = corrupt_events(app_engine, inbox, 40)
    with worker(processes=1, threads=4, env=WORKER_ENV):
        sent = [ingest_events.send(str(inbox.tenant_id), [str(event_id)])  # one job per event, as a trickle
                for event_id in events]                                     # of deliveries would make
        wait_for(lambda: len(ledger_rows(admin_engine, inbox.tenant_id)) == 40, timeout=60)
        wait_for(lambda: event_statuses(app_engine, inbox) == {"failed": 40}, timeout=30)

    rows = ledger_rows(admin_engine, inbox.tenant_id)
    assert {r["exception_type"] for r in rows} == {"PayloadError"}
    assert {r["attempts"] for r in rows} == {1}  # the event's fault: no retries
    assert {r["status"] for r in rows} == {"dead"}
    assert all("PayloadError: body is not valid JSON" in str(r["traceback"]) for r in rows)
    # Each row replays its one event, whichever job set it aside; the jobs themselves succeeded.
    messages = [cast(dict[str, Any], r["message"]) for r in rows]
    assert sorted(m["args"][1][0] for m in messages) == sorted(str(e) for e in events)
    assert {(m["args"][0], len(m["args"][1]), orjson.dumps(m["kwargs"])) for m in messages} == {
        (str(inbox.tenant_id), 1, b'{"retry_failed":true}')}
    dead = {m.decode() for m in redis_client.hkeys("dramatiq:ingest.XQ.msgs")}
    assert not dead & {str(m.options.get("redis_message_id")) for m in sent}

    listed = intake_json("dlq", "list", "--tenant", str(inbox.tenant_id))
    assert listed["total"] == 40
    assert listed["by_error"] == [{"exception_type": "PayloadError", "status": "dead", "count": 40}]
    shown = intake_json("dlq", "show", str(rows[0]["id"]))
    assert "Traceback" in str(shown["traceback"]) and shown["message"]["actor_name"] == "ingest_events"
    dry = intake_json("dlq", "replay", "--tenant", str(inbox.tenant_id), "--dry-run")
    assert dry == {"would_replay": 40, "dry_run": True}

    repair(app_engine, inbox, events)
    redis_client.delete("dramatiq:ingest", "dramatiq:ingest.msgs")
    # Two operators replay at the same moment: each failure is replayed exactly once.
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: intake_json("dlq", "replay", "--tenant", str(inbox.tenant_id),
                                                   "--batch", "3", process=True), range(2)))
    assert sum(int(r["replayed"]) for r in runs) == 40  # type: ignore[call-overload]
    assert redis_client.llen("dramatiq:ingest") == 40
    assert {r["status"] for r in ledger_rows(admin_engine, inbox.tenant_id)} == {"replayed"}

    with worker(processes=1, threads=4, env=WORKER_ENV):
        def stored() -> int:
            with app_engine.begin() as conn:
                bind_tenant(conn, inbox.tenant_id)
                return int(conn.execute(text("SELECT count(*) FROM messages")).scalar_one())
        wait_for(lambda: stored() == 40, timeout=60)
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        assert conn.execute(text("SELECT count(DISTINCT external_id), count(*) FROM messages")).one() == (40, 40)
        assert conn.execute(text("SELECT count(*) FROM inbound_events WHERE status = 'processed'")).scalar_one() == 40
    assert {(r["status"], r["attempts"]) for r in ledger_rows(admin_engine, inbox.tenant_id)} == {("replayed", 1)}
    stats = intake_json("dlq", "stats")
    assert stats["by_status"]["replayed"] >= 40  # type: ignore[index]


def test_unknown_tenants_and_discards(stack: dict[str, str], admin_engine: Engine,
                                     redis_client: redis.Redis) -> None:
    from workers.actors import ingest_events

    ghost = uuid.uuid4()
    message, again = (ingest_events.send(str(ghost), [str(uuid.uuid4())]) for _ in range(2))

    def failure(job_id: str) -> Row[Any] | None:
        with admin_engine.connect() as conn:
            return conn.execute(text("SELECT id, tenant_id, exception_type, attempts, status FROM job_failures "
                                     "WHERE message_id = :m"), {"m": job_id}).first()

    with worker(processes=1, threads=2, env=WORKER_ENV):
        wait_for(lambda: failure(message.message_id) is not None and failure(again.message_id) is not None,
                 timeout=30)
    row = failure(message.message_id)
    assert row is not None
    assert (row.tenant_id, row.exception_type, row.attempts) == (None, "UnknownTenantError", 1)
    assert intake_json("dlq", "discard", str(row.id)) == {"discarded": 1}
    assert intake_json("dlq", "replay", str(row.id)) == {"replayed": 0}

    # A replay removes dramatiq's own dead letter of the message.
    replayed = failure(again.message_id)
    assert replayed is not None
    dead_id = again.options["redis_message_id"]
    assert redis_client.zscore("dramatiq:ingest.XQ", dead_id) is not None
    assert intake_json("dlq", "replay", str(replayed.id)) == {"replayed": 1}
    assert redis_client.zscore("dramatiq:ingest.XQ", dead_id) is None
    queued = [orjson.loads(m)["message_id"] for m in redis_client.hvals("dramatiq:ingest.msgs")]
    assert queued.count(again.message_id) == 1  # enqueued again, under the same message id


def test_a_job_past_its_age_limit_is_recorded_instead_of_run_and_replays(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine
) -> None:
    from workers.actors import ingest_events
    broker = ingest_events.broker

    inbox = new_inbox(app_engine, "api")
    events = corrupt_events(app_engine, inbox, 1)
    repair(app_engine, inbox, events)
    # Sent a day and a minute ago (INTAKE_JOB_MAX_AGE_MS defaults to a day), say before a long outage.
    sent = int(time.time() * 1000) - 86_400_000 - 60_000
    broker.enqueue(ingest_events.message(str(inbox.tenant_id), [str(e) for e in events]).copy(message_timestamp=sent))
    with worker(processes=1, threads=2, env=WORKER_ENV):
        wait_for(lambda: ledger_rows(admin_engine, inbox.tenant_id) != [], timeout=30)
        (row,) = ledger_rows(admin_engine, inbox.tenant_id)
        assert (row["exception_type"], row["attempts"], row["status"]) == ("TimeoutError", 1, "dead")
        assert "age limit" in str(row["exception_message"])
        assert event_statuses(app_engine, inbox) == {"received": 1}  # skipped: the job never ran

        # A replay sends it again with a fresh timestamp: it runs.
        assert intake_json("dlq", "replay", str(row["id"])) == {"replayed": 1}
        wait_for(lambda: event_statuses(app_engine, inbox) == {"processed": 1}, timeout=30)
    assert [(r["status"], r["attempts"]) for r in ledger_rows(admin_engine, inbox.tenant_id)] == [("replayed", 1)]


def test_replay_refuses_to_guess(stack: dict[str, str]) -> None:
    result = run_intake("dlq", "replay")
    assert result.returncode == 2 and "--all" in result.stderr


def test_a_row_whose_message_cannot_be_rebuilt_is_left_dead_and_the_rest_replay(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine
) -> None:
    inbox = new_inbox(app_engine, "api")
    good = str(uuid.uuid4())
    message = {"queue_name": "ingest", "actor_name": "ingest_events", "message_id": good, "options": {},
               "args": [str(inbox.tenant_id), []], "kwargs": {}, "message_timestamp": 0}
    with admin_engine.begin() as conn:
        for message_id, stored in ((str(uuid.uuid4()), {}), (str(uuid.uuid4()), ["not", "a", "job"]),
                                   (good, message)):
            conn.execute(text(
                "INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, exception_type, "
                "exception_message, last_failed_at) VALUES (:t, 'ingest', 'ingest_events', :m, CAST(:msg AS jsonb), "
                "'ValueError', 'x', now() - interval '1 minute')"),
                {"t": inbox.tenant_id, "m": message_id, "msg": orjson.dumps(stored).decode()})
    assert intake_json("dlq", "replay", "--tenant", str(inbox.tenant_id)) == {"replayed": 1}
    statuses = {r["message_id"]: r["status"] for r in ledger_rows(admin_engine, inbox.tenant_id)}
    assert statuses.pop(good) == "replayed"
    assert sorted(statuses.values()) == ["dead", "dead"]
