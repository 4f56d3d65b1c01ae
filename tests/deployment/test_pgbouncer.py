"""The fleet through Debian's PgBouncer (1.18) in transaction mode, with INTAKE_DB_PREPARED_STATEMENTS=false.

What a user behind a managed pooler sees: deliveries through the web's group commit, ingest and AI workers,
the admin API, all on pooled server connections that other clients use between two of their transactions.
And why it is safe: the tenant (`set_config(..., true)`) and advisory locks end with the transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from config import SettingsError, load_settings
from db.engine import driver_options, make_engine
from db.tenancy import bind_tenant
from pipelines import changes
from pipelines.changes import Change
from tests.admin_server import admin_server, make_key
from tests.factories import new_inbox
from tests.fleet import CorpusTenant, post_all, settle
from tests.pgbouncer import Bouncer, pgbouncer
from tests.processes import wait_for, web_server, worker

WORKER_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "100",
              "INTAKE_JOB_MAX_BACKOFF_MS": "2000", "INTAKE_DB_PREPARED_STATEMENTS": "false"}
# More runs of one statement on one connection than psycopg's threshold (5) for preparing it.
MANY = 12


@pytest.fixture(scope="module")
def bouncer(stack: dict[str, str]) -> Iterator[Bouncer]:
    # Under the test home, not pytest's private temporary directory: PgBouncer run as root drops to the
    # embedded server's user, who must reach its files.
    workdir = Path(stack["INTAKE_HOME"]) / "pgbouncer"
    with pgbouncer(stack["DATABASE_URL"], workdir, ("intake_app", "postgres")) as b:
        yield b


@pytest.fixture(scope="module")
def pooled_env(stack: dict[str, str], bouncer: Bouncer) -> dict[str, str]:
    """The fleet's environment with both database URLs through PgBouncer, prepared statements off."""
    return {**stack, "DATABASE_URL": bouncer.url("intake_app"),
            "INTAKE_ADMIN_DATABASE_URL": bouncer.url("postgres"), "INTAKE_DB_PREPARED_STATEMENTS": "false"}


def backend(conn: psycopg.Connection[object]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def test_prepared_statements_through_transaction_pooling_fail_and_turning_them_off_fixes_it(
        bouncer: Bouncer) -> None:
    """The failure users met, reproduced (so this set-up really pools by transaction), then gone."""
    url = bouncer.url("intake_app", "intake_one")
    with psycopg.connect(url, autocommit=True) as a, psycopg.connect(url, autocommit=True) as b:
        assert backend(a) == backend(b)  # one server connection for both clients
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            for n in range(MANY):
                a.execute("SELECT %s::int", (n,))
                b.execute("SELECT %s::int", (n,))
    options = driver_options(prepared_statements=False)
    with psycopg.connect(url, autocommit=True, **options) as a, psycopg.connect(url, autocommit=True, **options) as b:
        for n in range(MANY):
            assert a.execute("SELECT %s::int, 'a'", (n,)).fetchone() == (n, "a")
            assert b.execute("SELECT %s::int + 1000, 'b'", (n,)).fetchone() == (n + 1000, "b")


def test_two_clients_on_one_server_connection_never_see_each_others_tenant_or_locks(
        app_engine: Engine, bouncer: Bouncer) -> None:
    first, second = new_inbox(app_engine, "api"), new_inbox(app_engine, "api")
    engine = make_engine(bouncer.url("intake_app", "intake_one"), prepared_statements=False, pool_size=2)
    try:
        with engine.connect() as a, engine.connect() as b:
            pids = set()
            for _ in range(MANY):
                for conn, mine, theirs in ((a, first, second), (b, second, first)):
                    with conn.begin():
                        assert conn.execute(text("SELECT current_setting('app.tenant_id', true)")).scalar() in (None, "")
                        assert conn.execute(text("SELECT pg_try_advisory_xact_lock(4242)")).scalar() is True
                        bind_tenant(conn, mine.tenant_id)
                        pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                        seen = set(conn.execute(text("SELECT id FROM inboxes")).scalars())
                        assert seen == {mine.id}, "a tenant saw another's rows or none of its own"
                        assert theirs.id not in seen
            assert len(pids) == 1, "the two clients did not share one server connection"
            # A lock held by an open transaction is held against the other client, and released at its end.
            with psycopg.connect(bouncer.url("intake_app"), autocommit=True) as other:
                with a.begin():
                    assert a.execute(text("SELECT pg_try_advisory_xact_lock(4243)")).scalar() is True
                    held = other.execute("SELECT pg_try_advisory_xact_lock(4243)").fetchone()
                    assert held == (False,)
                assert other.execute("SELECT pg_try_advisory_xact_lock(4243)").fetchone() == (True,)
    finally:
        engine.dispose()


def test_listen_needs_a_direct_connection_and_gets_it_from_the_listen_setting(
        stack: dict[str, str], app_engine: Engine, bouncer: Bouncer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The change feed's stream and the webhook dispatcher LISTEN on `intake_changes`: through a transaction
    pooler the LISTEN stays on a server connection the listener no longer holds, so nothing arrives; over
    INTAKE_LISTEN_DATABASE_URL (a direct session) the change committed through PgBouncer is heard."""
    monkeypatch.setenv("DATABASE_URL", bouncer.url("intake_app"))
    monkeypatch.setenv("INTAKE_LISTEN_DATABASE_URL", stack["DATABASE_URL"])
    settings = load_settings()
    assert settings.listen_url == stack["DATABASE_URL"]
    tenant = new_inbox(app_engine, "api").tenant_id
    options = driver_options(prepared_statements=False)
    with psycopg.connect(bouncer.url("intake_app", "intake_one"), autocommit=True, **options) as pooled, \
            psycopg.connect(settings.listen_url, autocommit=True) as direct:
        pooled.execute("LISTEN intake_changes")
        direct.execute("LISTEN intake_changes")
        engine = make_engine(bouncer.url("intake_app", "intake_one"), prepared_statements=False, pool_size=1)
        try:
            with engine.begin() as conn:
                bind_tenant(conn, tenant)
                changes.record(conn, tenant, [Change("conversation.opened")])
        finally:
            engine.dispose()
        heard = [n.payload for n in direct.notifies(timeout=10, stop_after=1)]
        assert heard == [f"{tenant}:1"]
        assert [n.payload for n in pooled.notifies(timeout=0.5, stop_after=1)] == []


def test_the_listen_setting_defaults_to_database_url_and_refuses_what_is_not_postgresql(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://intake_app@pooler:6432/intake")
    monkeypatch.delenv("INTAKE_LISTEN_DATABASE_URL", raising=False)
    assert load_settings().listen_url == "postgresql://intake_app@pooler:6432/intake"
    for hostile in ("redis://localhost:6379/0", "postgresql\x01://x", "x" * 5000, "\uff50ostgresql://x"):
        monkeypatch.setenv("INTAKE_LISTEN_DATABASE_URL", hostile)
        with pytest.raises(SettingsError, match=r"INTAKE_LISTEN_DATABASE_URL: .*must be a PostgreSQL URL"):
            load_settings()
    monkeypatch.delenv("INTAKE_LISTEN_DATABASE_URL")
    for hostile in ("maybe", "", "2", "{}"):
        monkeypatch.setenv("INTAKE_DB_PREPARED_STATEMENTS", hostile)
        with pytest.raises(SettingsError, match="INTAKE_DB_PREPARED_STATEMENTS: "):
            load_settings()


def test_the_fleet_ingests_classifies_and_answers_through_pgbouncer(
        stack: dict[str, str], app_engine: Engine, admin_engine: Engine, pooled_env: dict[str, str],
        tmp_path: Path) -> None:
    """Web (group commit), ingest and AI workers and the admin API, every one through PgBouncer."""
    tenants = [CorpusTenant(app_engine, "US", 8, seed=301), CorpusTenant(app_engine, "FI", 8, seed=302)]
    web_env = {**pooled_env, "INTAKE_RATE_LIMIT_PER_SECOND": "100000", "INTAKE_RATE_LIMIT_BURST": "100000"}
    with web_server(web_env, log_path=tmp_path / "web.log") as base, \
            worker(processes=1, threads=4, env={**pooled_env, **WORKER_ENV}, queues=("ingest", "ai")):
        posted = asyncio.run(post_all(base, tenants, concurrency=16))
        assert set(posted.codes) == {200}, (posted.codes, (tmp_path / "web.log").read_text()[-2000:])
        settle(tenants, app_engine, timeout=120)
        for tenant in tenants:
            assert tenant.counts(app_engine) == tenant.expected()

        def classified(tenant: CorpusTenant) -> tuple[int, int]:
            with app_engine.begin() as conn:
                bind_tenant(conn, tenant.tenant_id)
                return conn.execute(text("SELECT (SELECT count(*) FROM messages), "
                                         "(SELECT count(DISTINCT message_id) FROM ai_classifications)")).one()

        wait_for(lambda: all(classified(t)[0] == classified(t)[1] for t in tenants), timeout=120, interval=0.5)
    assert "DuplicatePreparedStatement" not in (tmp_path / "web.log").read_text()

    operator = make_key(admin_engine)
    with admin_server(pooled_env, db_prepared_statements=False) as url, \
            httpx.Client(base_url=url, headers=operator.headers, timeout=30) as op:
        created = {op.post("/v1/admin/tenants", json={"name": f"Pooled {n}"}).json()["id"] for n in range(MANY)}
        assert len(created) == MANY
        for _ in range(MANY):
            for tenant in tenants:
                answer = op.get(f"/v1/admin/tenants/{tenant.tenant_id}/inboxes")
                assert answer.status_code == 200, answer.text
                assert {i["id"] for i in answer.json()["items"]} == {str(i.id) for i in tenant.inboxes.values()}
            shown = op.get(f"/v1/admin/tenants/{next(iter(created))}")
            assert shown.status_code == 200 and shown.json()["name"].startswith("Pooled ")
        stats = op.get(f"/v1/admin/tenants/{tenants[0].tenant_id}/stats").json()
        assert stats["tables"]["messages"]["rows"] == tenants[0].expected()["messages"]
    with admin_engine.connect() as conn:
        audited = conn.execute(text("SELECT count(*) FROM audit_logs WHERE action = 'tenant.create' "
                                    "AND subject_id = ANY(:ids)"), {"ids": sorted(created)})
        assert audited.scalar_one() == MANY
