"""Statements run through `db.direct` belong to the SQLAlchemy transaction they run in: committed with it,
rolled back with it, seen by its listeners (with a context they can keep state on), failing with SQLAlchemy's
errors and invalidating a lost connection as SQLAlchemy would, their cursor freed with its connection."""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from db import batch, direct
from db.engine import make_engine, sqlalchemy_url
from db.tenancy import bind_tenant
from tests.processes import wait_for


@pytest.fixture
def table(admin_engine: Engine) -> Iterator[str]:
    name = f"direct_probe_{uuid.uuid4().hex[:12]}"
    with admin_engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {name} (id uuid PRIMARY KEY, note text, at timestamptz)"))
    yield name
    with admin_engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {name}"))


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_direct_statement_commits_and_rolls_back_with_its_sqlalchemy_transaction(
        admin_engine: Engine, table: str) -> None:
    insert = text(f"INSERT INTO {table} (id, note) VALUES (:id, :note)")
    with admin_engine.connect() as conn:  # no explicit begin: the first direct statement begins, as execute would
        direct.run(conn, insert, {"id": uuid.uuid4(), "note": "kept"})
        conn.commit()
    with admin_engine.connect() as conn:
        direct.run(conn, insert, {"id": uuid.uuid4(), "note": "dropped"})
        conn.rollback()
    with pytest.raises(RuntimeError), admin_engine.begin() as conn:
        direct.run(conn, insert, {"id": uuid.uuid4(), "note": "dropped with the failed block"})
        raise RuntimeError
    with admin_engine.connect() as conn:
        assert [r.note for r in direct.rows(conn, text(f"SELECT note FROM {table}"))] == ["kept"]


def test_json_rows_and_typed_ids_round_trip_and_listeners_see_each_statement(
        admin_engine: Engine, table: str) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    rows = [{"id": i, "note": note, "at": "2026-01-02T03:04:05.123456+00:00"}
            for i, note in zip(ids, ["plain", 'quote " and \\ backslash, {brace}', "ünïcödé ✓ 🙂"], strict=True)]
    seen: list[str] = []

    def listen(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split()[0])

    with admin_engine.begin() as conn:
        event.listen(conn, "before_cursor_execute", listen)
        inserted = direct.run(conn, text(
            f"INSERT INTO {table} (id, note, at) SELECT id, note, at "
            "FROM json_to_recordset(CAST(:rows AS json)) AS r(id uuid, note text, at timestamptz)"),
            {"rows": batch.rows(rows)})
        found = direct.rows(conn, text(f"SELECT id, note, at FROM {table} WHERE id = ANY(:ids) ORDER BY note"),
                            {"ids": batch.uuids(ids[:2])})
        event.remove(conn, "before_cursor_execute", listen)
    assert inserted == 3 and seen == ["INSERT", "SELECT"]
    assert sorted(r.note for r in found) == sorted(str(r["note"]) for r in rows[:2])
    assert {r.id for r in found} == set(ids[:2]) and all(r.at.microsecond == 123456 for r in found)
    with pytest.raises(ValueError):
        batch.uuids(["not-a-uuid}, {1"])  # ids are checked: nothing else goes into the array's text


def test_errors_are_sqlalchemys_with_the_drivers_error_inside(admin_engine: Engine, table: str) -> None:
    insert = text(f"INSERT INTO {table} (id, note) VALUES (:id, :note)")
    same = uuid.uuid4()
    with admin_engine.connect() as conn:
        direct.run(conn, insert, {"id": same, "note": "first"})
        with pytest.raises(IntegrityError) as caught:  # the class SQLAlchemy's own execute would raise
            direct.run(conn, insert, {"id": same, "note": "again"})
        assert isinstance(caught.value.orig, psycopg.errors.UniqueViolation)
        assert not caught.value.connection_invalidated and not conn.invalidated
        conn.rollback()
        with pytest.raises(ProgrammingError):
            direct.rows(conn, text("SELECT no_such_column FROM pg_class"))


class Tracer:
    """Listens as OpenTelemetry's SQLAlchemy instrumentation does: keeps its span on the execution context
    before the statement, reads it back (and removes it) after, and comments the statement it traces."""

    def __init__(self) -> None:
        self.spans: list[str] = []
        self.errors: list[str] = []
        self.open = 0

    def before(self, conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> tuple[str, Any]:
        context._probe_span = statement.split()[0]
        self.open += 1
        return statement + " /* traced */", parameters

    def after(self, conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:
        assert statement.endswith("/* traced */")
        self.spans.append(context._probe_span)
        del context._probe_span
        self.open -= 1

    def error(self, exception_context: Any) -> None:
        self.errors.append(exception_context.execution_context._probe_span)
        self.open -= 1

    def listen(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self.before, retval=True)
        event.listen(engine, "after_cursor_execute", self.after)
        event.listen(engine, "handle_error", self.error)

    def remove(self, engine: Engine) -> None:
        event.remove(engine, "before_cursor_execute", self.before)
        event.remove(engine, "after_cursor_execute", self.after)
        event.remove(engine, "handle_error", self.error)


def test_an_instrumentation_that_keeps_state_on_the_context_traces_an_ingest_batch(stack: dict[str, str],
                                                                                  app_engine: Engine) -> None:
    from pipelines.ingest import IngestPolicy, ingest_events
    from tests.factories import new_inbox
    from tests.ingest.test_ingest_pipeline import api_message, store_events

    inbox = new_inbox(app_engine, "api")
    sent = datetime(2026, 11, 20, 10, tzinfo=UTC)
    bodies = [api_message(f"m{n}", sent, f"hello {n}", external_id=f"cust{n % 2}")[0] for n in range(4)]
    events = store_events(app_engine, inbox, bodies)
    engine = make_engine(stack["DATABASE_URL"], prepared_statements=True, application_name="intake-tests-traced")
    tracer = Tracer()
    tracer.listen(engine)
    try:
        with engine.begin() as conn:
            bind_tenant(conn, inbox.tenant_id)
            result = ingest_events(conn, inbox.tenant_id, events, IngestPolicy())
            with pytest.raises(ProgrammingError):  # a failed statement's context reaches `handle_error`
                with direct.savepoint(conn):
                    direct.rows(conn, text("SELECT no_such_column FROM pg_class"))
    finally:
        tracer.remove(engine)
        engine.dispose()
    assert len(result.messages_created) == 4 and not result.failed
    # The batch's statements, each traced from start to end: the savepoint, the inserts, the events marked.
    assert tracer.open == 0 and tracer.errors == ["SELECT"]
    assert {"SAVEPOINT", "RELEASE", "INSERT", "UPDATE"} <= set(tracer.spans) and len(tracer.spans) >= 10
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        stored = conn.execute(text("SELECT count(*) FROM inbound_events WHERE status = 'processed'")).scalar_one()
    assert stored == 4


def pid(conn: Connection) -> int:
    (row,) = direct.rows(conn, text("SELECT pg_backend_pid() AS pid"))
    return int(row.pid)


def test_a_direct_statement_on_a_lost_connection_invalidates_it_and_the_pools_older_ones(
        stack: dict[str, str], admin_engine: Engine) -> None:
    # No pre-ping: only the invalidation keeps the pool from handing out a connection the server has dropped.
    engine = create_engine(sqlalchemy_url(stack["DATABASE_URL"]), pool_size=2, pool_pre_ping=False,
                           connect_args={"application_name": "intake-tests-lost"})
    try:
        first, second = engine.connect(), engine.connect()
        pids = [pid(c) for c in (first, second)]
        second.close()  # idle in the pool, as a worker's spare connections are when PostgreSQL restarts
        first.commit()
        with admin_engine.begin() as conn:
            # as a restart does; the call waits (up to 10 s) until each backend has gone
            conn.execute(text("SELECT pg_terminate_backend(pid, 10000) FROM unnest(CAST(:pids AS int[])) AS pid"),
                         {"pids": pids})
        with pytest.raises(OperationalError) as caught:
            direct.run(first, text("SELECT 1"))
        assert caught.value.connection_invalidated and first.invalidated
        first.rollback()
        # The same Connection reconnects, and the idle one is replaced at its checkout instead of failing.
        assert pid(first) not in pids
        first.close()
        with engine.connect() as again, engine.connect() as other:
            fresh = {pid(c) for c in (again, other)}
        assert not fresh & set(pids)
    finally:
        engine.dispose()


def test_a_connection_retired_by_pool_recycle_is_freed_with_its_cursor(stack: dict[str, str]) -> None:
    engine = create_engine(sqlalchemy_url(stack["DATABASE_URL"]), pool_size=1, pool_recycle=1)
    try:
        with engine.connect() as conn:
            direct.run(conn, text("SELECT 1"))
            retired = weakref.ref(conn.connection.driver_connection)

        def recycled() -> bool:
            with engine.connect() as conn:
                direct.run(conn, text("SELECT 1"))
                return conn.connection.driver_connection is not retired()

        wait_for(recycled, timeout=10, interval=0.1)
        gc.collect()
        assert retired() is None
    finally:
        engine.dispose()


def test_savepoints_nest_and_a_failed_block_leaves_the_transaction_usable(admin_engine: Engine, table: str) -> None:
    insert = text(f"INSERT INTO {table} (id, note) VALUES (:id, :note)")
    clash = uuid.uuid4()
    with admin_engine.begin() as conn:
        with direct.savepoint(conn):
            direct.run(conn, insert, {"id": clash, "note": "outer"})
            with pytest.raises(IntegrityError), direct.savepoint(conn):
                direct.run(conn, insert, {"id": uuid.uuid4(), "note": "inner, undone"})
                conn.execute(insert, {"id": clash, "note": "clash"})  # SQLAlchemy's statements are covered too
            direct.run(conn, insert, {"id": uuid.uuid4(), "note": "after"})
        with pytest.raises(RuntimeError), direct.savepoint(conn):
            direct.run(conn, insert, {"id": uuid.uuid4(), "note": "raised in the block, undone"})
            raise RuntimeError
    assert count(admin_engine, table) == 2
    with admin_engine.connect() as conn:
        assert sorted(r.note for r in direct.rows(conn, text(f"SELECT note FROM {table}"))) == ["after", "outer"]


def test_the_compiled_statements_are_bounded(admin_engine: Engine) -> None:
    with admin_engine.connect() as conn:
        for n in range(direct.COMPILED_MAX + 50):  # a statement built per call, as no module should
            direct.run(conn, text(f"SELECT {n}"))
        assert len(direct._compiled) == direct.COMPILED_MAX
        conn.rollback()
