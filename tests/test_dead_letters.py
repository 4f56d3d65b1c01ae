"""The failure ledger and `intake dlq`, with real worker processes, Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.processes import INTAKE, wait_for, worker

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
            "SELECT id, actor, queue, exception_type, exception_message, traceback, attempts, status, message "
            "FROM job_failures WHERE tenant_id = :t"), {"t": tenant}).mappings()]


def intake_json(*args: str) -> dict[str, object]:
    result = subprocess.run([INTAKE, *args, "--json"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_permanent_failures_skip_retries_and_replay_once_after_the_fix(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis
) -> None:
    from workers.actors import ingest_events

    inbox = new_inbox(app_engine, "api")
    events = corrupt_events(app_engine, inbox, 40)
    with worker(processes=1, threads=4, env=WORKER_ENV):
        for event_id in events:  # one job per event, as a trickle of deliveries would make
            ingest_events.send(str(inbox.tenant_id), [str(event_id)])
        wait_for(lambda: len(ledger_rows(admin_engine, inbox.tenant_id)) == 40, timeout=60)

    rows = ledger_rows(admin_engine, inbox.tenant_id)
    assert {r["exception_type"] for r in rows} == {"CorruptEvent"}
    assert {r["attempts"] for r in rows} == {1}  # permanent: no retries
    assert {r["status"] for r in rows} == {"dead"}
    assert all("CorruptEvent" in str(r["traceback"]) for r in rows)
    assert redis_client.zcard("dramatiq:ingest.XQ") >= 40

    listed = intake_json("dlq", "list", "--tenant", str(inbox.tenant_id))
    assert listed["total"] == 40
    assert listed["by_error"] == [{"exception_type": "CorruptEvent", "status": "dead", "count": 40}]
    shown = intake_json("dlq", "show", str(rows[0]["id"]))
    assert "Traceback" in str(shown["traceback"]) and shown["message"]["actor_name"] == "ingest_events"
    dry = intake_json("dlq", "replay", "--tenant", str(inbox.tenant_id), "--dry-run")
    assert dry == {"would_replay": 40, "dry_run": True}

    repair(app_engine, inbox, events)
    redis_client.delete("dramatiq:ingest", "dramatiq:ingest.msgs")
    # Two operators replay at the same moment: each failure is replayed exactly once.
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: intake_json("dlq", "replay", "--tenant", str(inbox.tenant_id),
                                                   "--batch", "3"), range(2)))
    assert sum(int(r["replayed"]) for r in runs) == 40  # type: ignore[call-overload]
    assert redis_client.llen("dramatiq:ingest") == 40
    assert {r["status"] for r in ledger_rows(admin_engine, inbox.tenant_id)} == {"replayed"}
    dead_ids = {str(orjson.loads(json.dumps(r["message"])).get("redis_message_id")) for r in rows}
    assert not dead_ids & {m.decode() for m in redis_client.zrange("dramatiq:ingest.XQ", 0, -1)}

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
    stats = intake_json("dlq", "stats")
    assert stats["by_status"]["replayed"] >= 40  # type: ignore[index]


def test_unknown_tenants_and_discards(stack: dict[str, str], admin_engine: Engine) -> None:
    from workers.actors import ingest_events

    ghost = uuid.uuid4()
    message = ingest_events.send(str(ghost), [str(uuid.uuid4())])
    with worker(processes=1, threads=2, env=WORKER_ENV):
        def recorded() -> bool:
            with admin_engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM job_failures WHERE message_id = :m"),
                                    {"m": message.message_id}).scalar_one() == 1
        wait_for(recorded, timeout=30)
    with admin_engine.connect() as conn:
        row = conn.execute(text("SELECT id, tenant_id, exception_type, attempts FROM job_failures "
                                "WHERE message_id = :m"), {"m": message.message_id}).one()
    assert (row.tenant_id, row.exception_type, row.attempts) == (None, "UnknownTenantError", 1)
    assert intake_json("dlq", "discard", str(row.id)) == {"discarded": 1}
    assert intake_json("dlq", "replay", str(row.id)) == {"replayed": 0}


def test_replay_refuses_to_guess(stack: dict[str, str]) -> None:
    result = subprocess.run([INTAKE, "dlq", "replay"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--all" in result.stderr
