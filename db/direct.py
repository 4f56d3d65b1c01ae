"""Statements run on the driver's own connection, inside the transaction SQLAlchemy holds.

SQLAlchemy spends about 70 us of CPU on each execution of a `text()` statement (the compiled cache, parameter
processing, an execution context, a result object) on top of psycopg's own 30 us. An ingest job runs about
fifteen statements, so for a job of one message (a fleet of many tenants, each sending a little) that
bookkeeping cost the worker more than the work. The hot path's statements therefore run here: the same
`text()` statements, compiled once to psycopg's placeholders, executed by psycopg on the same connection in
the same transaction, rows as named tuples (`row.id`, as SQLAlchemy's rows read). Errors are psycopg's own,
not wrapped in SQLAlchemy's (`pipelines.errors.is_retryable` and `describe` know both). Listeners of
SQLAlchemy's `before_cursor_execute` and `after_cursor_execute` events (tracing, statement counts) still see
each statement. Everything else uses SQLAlchemy.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, TextClause

# Each statement object compiled once and kept: for statements built once (the modules' constants), never
# for one built per call.
_compiled: dict[TextClause, str] = {}
# One cursor per driver connection, kept for its life: a new cursor copies the connection's adapters.
_cursors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _sql(conn: Connection, statement: TextClause) -> str:
    sql = _compiled.get(statement)
    if sql is None:  # `:name` becomes `%(name)s`, a literal `%` becomes `%%`: the dialect's own compiler
        sql = _compiled[statement] = str(statement.compile(dialect=conn.dialect))
    return sql


def _cursor(conn: Connection) -> Any:
    """A cursor on psycopg's connection under `conn`, in `conn`'s transaction."""
    if not conn.in_transaction():
        conn.begin()  # as SQLAlchemy's own execute would: then `conn.commit()` commits this statement's work
    driver = conn.connection.driver_connection
    assert driver is not None, "the connection was closed"
    cursor = _cursors.get(driver)
    if cursor is None or cursor.closed:
        cursor = _cursors[driver] = driver.cursor(row_factory=namedtuple_row)
    return cursor


def _execute(conn: Connection, cursor: Any, statement: TextClause, params: Mapping[str, Any] | None) -> None:
    sql = _sql(conn, statement)
    dispatch = conn.dispatch
    if dispatch.before_cursor_execute:
        dispatch.before_cursor_execute(conn, cursor, sql, params, None, False)
    cursor.execute(sql, params)
    if dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(conn, cursor, sql, params, None, False)


def rows(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None = None) -> list[Any]:
    """Every row `statement` returns (none for a statement that returns no rows)."""
    cursor = _cursor(conn)
    _execute(conn, cursor, statement, params)
    return cursor.fetchall() if cursor.description is not None else []


def first(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None = None) -> Any | None:
    """The first row `statement` returns, or None."""
    found = rows(conn, statement, params)
    return found[0] if found else None


def run(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None = None) -> int:
    """Execute `statement` for its effect; the number of rows it touched."""
    cursor = _cursor(conn)
    _execute(conn, cursor, statement, params)
    return int(cursor.rowcount)
