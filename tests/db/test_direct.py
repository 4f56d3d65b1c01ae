"""Statements run through `db.direct` belong to the SQLAlchemy transaction they run in: committed with it,
rolled back with it, seen by its listeners, typed as the batch helpers say."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text

from db import batch, direct


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
