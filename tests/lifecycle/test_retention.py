"""Retention, driven by a clock the test sets: each kind of record goes exactly when due and not before, as
the clock's maintenance role, in small batches whose freed space the table reuses."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import Engine, text

from config import Settings
from db.engine import make_engine
from db.tenancy import TenantId, bind_tenant
from pipelines.ingest import IngestPolicy, ingest_events
from pipelines.lifecycle.retention import RetentionPolicy, apply_retention
from tests.factories import new_inbox

CLOCK_ROLE = "e_lifecycle_clock"  # a login role in intake_maintenance, as an operator would run the clock
NOW = datetime(2027, 6, 15, 12, 0, tzinfo=UTC)
DEFAULTS = RetentionPolicy.defaults(Settings(retention_event_body_days=30, retention_failure_days=14,
                                             retention_audit_days=365, retention_ai_usage_days=90))


@pytest.fixture(scope="module")
def clock_engine(stack: dict[str, str]) -> Iterator[Engine]:
    with psycopg.connect(stack["INTAKE_ADMIN_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{CLOCK_ROLE}') THEN
                CREATE ROLE {CLOCK_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS;
            END IF; END $$""")
        conn.execute(f"GRANT intake_maintenance TO {CLOCK_ROLE}")
    engine = make_engine(stack["DATABASE_URL"].replace("intake_app@", f"{CLOCK_ROLE}@", 1), prepared_statements=True)
    yield engine
    engine.dispose()


def add_event(engine: Engine, tenant: TenantId, inbox_id: uuid.UUID, key: str, processed_at: datetime | None,
              body: bytes = b'{"text": "hello"}') -> uuid.UUID:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return uuid.UUID(str(conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body, headers, status, "
            "processed_at, received_at) VALUES (:t, :i, 'api', :k, :b, '{\"webhook-id\": \"x\"}', :s, :p, "
            "coalesce(:p, now())) RETURNING id"),
            {"t": tenant, "i": inbox_id, "k": key, "b": body, "s": "processed" if processed_at else "received",
             "p": processed_at}).scalar_one()))


def rows(engine: Engine, tenant: TenantId, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return list(conn.execute(text(sql), {"t": tenant, **params}).all())


def test_each_kind_goes_exactly_when_due(app_engine: Engine, clock_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    with app_engine.begin() as conn:  # this tenant keeps bodies 7 days; a nonsense value is ignored
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE tenants SET settings = CAST(:s AS jsonb) WHERE id = :t"),
                     {"t": tenant, "s": orjson.dumps({"retention": {"event_body_days": 7, "audit_days": "soon"}}).decode()})
    day = timedelta(days=1)
    old = add_event(app_engine, tenant, inbox.id, "old", NOW - 7 * day - timedelta(seconds=1))
    fresh = add_event(app_engine, tenant, inbox.id, "fresh", NOW - 7 * day + timedelta(seconds=1))
    waiting = add_event(app_engine, tenant, inbox.id, "waiting", None)
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        for status, age in (("resolved", 15), ("discarded", 13), ("dead", 400)):
            conn.execute(text(
                "INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, exception_type, "
                "exception_message, status, last_failed_at) VALUES (:t, 'ingest', 'ingest_events', :m, "
                "jsonb_build_object('queue_name', 'ingest', 'actor_name', 'ingest_events', 'message_id', CAST(:m AS text), "
                "'args', jsonb_build_array(CAST(:t AS text), jsonb_build_array()), 'kwargs', '{}'::jsonb, 'options', '{}'::jsonb), "
                "'ValueError', 'x', 'dead', :at)"), {"t": tenant, "m": f"{tenant}-{status}", "at": NOW - age * day})
            if status != "dead":  # the trigger stamps settled_at; the test moves it to its age
                conn.execute(text("UPDATE job_failures SET status = :s WHERE message_id = :m"),
                             {"s": status, "m": f"{tenant}-{status}"})
                conn.execute(text("UPDATE job_failures SET settled_at = :at WHERE message_id = :m"),
                             {"at": NOW - age * day, "m": f"{tenant}-{status}"})
        for age in (366, 364):
            conn.execute(text("INSERT INTO audit_logs (tenant_id, actor, action, subject_type, subject_id, created_at) "
                              "VALUES (:t, 'test', 'test', 'x', 'y', :at)"), {"t": tenant, "at": NOW - age * day})

    removed = apply_retention(clock_engine, DEFAULTS, now=NOW, batch=10, tenant=tenant)
    assert (removed.event_bodies, removed.failures, removed.audit_rows) == (1, 1, 1)
    events = {r.id: r for r in rows(app_engine, tenant, "SELECT id, body, headers, body_purged_at FROM inbound_events")}
    assert bytes(events[old].body) == b"" and events[old].headers == {} and events[old].body_purged_at == NOW
    assert bytes(events[fresh].body) != b"" and bytes(events[waiting].body) != b""
    assert {r.status for r in rows(app_engine, tenant, "SELECT status FROM job_failures")} == {"discarded", "dead"}
    assert len(rows(app_engine, tenant, "SELECT 1 FROM audit_logs")) == 1
    # A moment later the next ones are due; running again at the same time removes nothing.
    assert apply_retention(clock_engine, DEFAULTS, now=NOW, tenant=tenant).as_dict()["event_bodies"] == 0
    later = apply_retention(clock_engine, DEFAULTS, now=NOW + 2 * day, tenant=tenant)
    assert (later.event_bodies, later.failures, later.audit_rows) == (1, 1, 1)

    # A provider's late retry of a purged event is still a duplicate; running the purged event again is harmless.
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        assert conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body) VALUES (:t, :i, 'api', 'old', "
            "'{}') ON CONFLICT (tenant_id, inbox_id, dedupe_key) DO NOTHING RETURNING id"),
            {"t": tenant, "i": inbox.id}).first() is None
        conn.execute(text("UPDATE inbound_events SET status = 'received' WHERE id = :id"), {"id": old})
        result = ingest_events(conn, tenant, [old], IngestPolicy())
        # The dead ledger row is this test's invention: settled, so no other test's replay takes it up.
        conn.execute(text("UPDATE job_failures SET status = 'discarded' WHERE tenant_id = :t"), {"t": tenant})
    assert result.processed == [old] and not result.failed


def test_ai_usage_is_rolled_up_into_monthly_totals_before_it_goes(app_engine: Engine, clock_engine: Engine) -> None:
    tenant = new_inbox(app_engine, "api").tenant_id
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        for n, created in enumerate([datetime(2027, 2, 3, tzinfo=UTC), datetime(2027, 2, 27, tzinfo=UTC),
                                     datetime(2027, 3, 16, 11, 0, tzinfo=UTC), NOW - timedelta(days=89)]):
            conn.execute(text(
                "INSERT INTO ai_usage (tenant_id, feature, provider, model, tokens_in, tokens_out, cost_usd, "
                "latency_ms, created_at) VALUES (:t, 'classify', 'openai', 'gpt-4o-mini', :i, 10, 0.25, 100, :at)"),
                {"t": tenant, "i": 100 + n, "at": created})
    removed = apply_retention(clock_engine, DEFAULTS, now=NOW, batch=2, tenant=tenant)
    assert removed.ai_usage_rows == 3
    monthly = rows(app_engine, tenant, "SELECT month, calls, tokens_in, tokens_out, cost_usd, latency_ms "
                                       "FROM ai_usage_monthly ORDER BY month")
    assert [(r.month.isoformat(), r.calls, r.tokens_in, r.tokens_out, str(r.cost_usd), r.latency_ms)
            for r in monthly] == [("2027-02-01", 2, 201, 20, "0.500000", 200), ("2027-03-01", 1, 102, 10,
                                                                                    "0.250000", 100)]
    assert len(rows(app_engine, tenant, "SELECT 1 FROM ai_usage")) == 1
    assert apply_retention(clock_engine, DEFAULTS, now=NOW, tenant=tenant).ai_usage_rows == 0


def table_figures(admin_engine: Engine) -> dict[str, int]:
    with admin_engine.connect() as conn:
        row = conn.execute(text(
            "SELECT n_tup_upd, n_dead_tup, pg_total_relation_size(relid) AS size FROM pg_stat_user_tables "
            "WHERE relname = 'inbound_events'")).one()
    return dict(row._mapping)


def settle_statistics(admin_engine: Engine) -> None:
    with admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM inbound_events"))
        conn.execute(text("SELECT pg_stat_force_next_flush()"))


def test_purging_in_batches_leaves_space_the_table_reuses(app_engine: Engine, admin_engine: Engine,
                                                         clock_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant, n, body = inbox.tenant_id, 20_000, "x" * 1500

    def fill(prefix: str, processed_at: datetime) -> None:
        with admin_engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body, status, processed_at) "
                "SELECT :t, :i, 'api', :p || g, convert_to(:b || g, 'UTF8'), 'processed', :at "
                "FROM generate_series(1, :n) g"), {"t": tenant, "i": inbox.id, "p": prefix, "b": body, "n": n,
                                                   "at": processed_at})

    fill("first-", NOW - timedelta(days=40))
    settle_statistics(admin_engine)
    before = table_figures(admin_engine)
    started = time.monotonic()
    removed = apply_retention(clock_engine, DEFAULTS, now=NOW, batch=1000, tenant=tenant)
    took = time.monotonic() - started
    assert removed.event_bodies == n and removed.batches >= n // 1000
    deadline = time.monotonic() + 15  # the clock's connections report their counts within a second or so
    while (purged := table_figures(admin_engine))["n_tup_upd"] - before["n_tup_upd"] < n:
        assert time.monotonic() < deadline, purged
        time.sleep(0.1)
    settle_statistics(admin_engine)
    after = table_figures(admin_engine)
    assert after["n_dead_tup"] == 0  # a plain VACUUM (no lock that blocks writers) reclaimed every version
    fill("second-", NOW - timedelta(days=1))
    settle_statistics(admin_engine)
    refilled = table_figures(admin_engine)
    growth = (refilled["size"] - before["size"]) / before["size"]
    print(f"\npurged {n} bodies in {removed.batches} batches, {took * 1000 / removed.batches:.1f} ms each; "
          f"table {before['size'] // 1024} KiB before, {refilled['size'] // 1024} KiB after as many new rows "
          f"({growth:+.0%})")
    assert growth < 0.25  # the new rows went mostly into the space the purge freed


def test_the_clock_applies_retention_and_reports_it(stack: dict[str, str], clock_engine: Engine) -> None:
    import json
    import os
    import subprocess

    from tests.processes import INTAKE

    clock_url = stack["DATABASE_URL"].replace("intake_app@", f"{CLOCK_ROLE}@", 1)
    env = {**os.environ, "INTAKE_ADMIN_DATABASE_URL": clock_url, "INTAKE_CLOCK_METRICS_PORT": "0"}
    result = subprocess.run([INTAKE, "clock", "--once", "--json"], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["retention_removed"]) >= {"event_bodies", "failures", "audit_rows", "ai_usage_rows"}
    assert set(data["sla_breaches"]) == {"first_response", "resolution"}
