"""Statements run on the driver's own connection, inside the transaction SQLAlchemy holds.

SQLAlchemy spends about 70 us of CPU on each execution of a `text()` statement (the compiled cache, parameter
processing, an execution context, a result object) on top of psycopg's own 30 us. An ingest job runs about
fifteen statements, so for a job of one message (a fleet of many tenants, each sending a little) that
bookkeeping cost the worker more than the work. The hot path's statements therefore run here: the same
`text()` statements, compiled once to psycopg's placeholders, executed by psycopg on the same connection in
the same transaction, rows as named tuples (`row.id`, as SQLAlchemy's rows read). Everything else uses
SQLAlchemy. Where the two meet, this module behaves as SQLAlchemy does for its own statements:

- Errors are SQLAlchemy's: a driver error comes out wrapped in `DBAPIError` (an `IntegrityError`, an
  `OperationalError`, ... with psycopg's own error as `.orig`), as the statements beside these raise, so a
  caller catches one kind whichever way a statement ran.
- A lost connection is invalidated as SQLAlchemy invalidates it: the error says `connection_invalidated`,
  the connection is closed rather than returned to the pool, and every connection the pool handed out
  before the loss is replaced at its next checkout (a restarted PostgreSQL killed them all). An
  interruption mid-statement (dramatiq's time limit, a shutdown) leaves the protocol in an unknown state,
  and invalidates the connection too, without touching the others.
- Listeners of `before_cursor_execute`, `after_cursor_execute` and `handle_error` (tracing, statement
  counts) see every statement, with a `DirectContext` as the execution context: an object they may set
  their own attributes on (OpenTelemetry keeps its span there) and read them back after the statement. A
  `before_cursor_execute` listener registered with `retval=True` may rewrite the statement and its
  parameters (a SQL comment, say), as with SQLAlchemy's own statements. The context is built only when a
  listener is there, so a fleet without one pays nothing for it.
- The cursor lives as long as its connection: it is kept in the pool's record of the connection (`info`),
  which the pool clears when it closes the connection (recycled, invalidated), so a retired connection and
  its cursor are freed together.

`savepoint()` is the one way to isolate part of a transaction: plain `SAVEPOINT` statements run here, which
SQLAlchemy does not track, so nothing should mix them with `Connection.begin_nested()` (whose savepoint a
rollback to an outer one would destroy behind SQLAlchemy's back).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, TextClause, text

# Each statement compiled once and kept: the modules' constants are a few hundred. A statement built per call
# would only churn through the cache; past COMPILED_MAX the oldest entry goes, so it cannot grow without end.
COMPILED_MAX = 1024
_compiled: dict[TextClause, str] = {}
# The cursor's key in the pool's `info` for its connection: a new cursor copies the connection's adapters.
CURSOR = "intake.direct.cursor"

# One name for every savepoint: PostgreSQL lets a name be reused, and ROLLBACK TO and RELEASE then act on the
# latest savepoint of that name, which is the innermost `with savepoint()` block.
SAVEPOINT = text("SAVEPOINT intake_savepoint")
ROLLBACK_TO_SAVEPOINT = text("ROLLBACK TO SAVEPOINT intake_savepoint")
RELEASE_SAVEPOINT = text("RELEASE SAVEPOINT intake_savepoint")
# Savepoints left open to the end of the transaction (`released=False`) go by a name of their own: a later
# `intake_savepoint` block, or an outer one, then still finds its own (rolling back to or releasing a
# savepoint ends the ones set after it, these among them).
ATTEMPT = text("SAVEPOINT intake_attempt")
ROLLBACK_TO_ATTEMPT = text("ROLLBACK TO SAVEPOINT intake_attempt")


class DirectContext:
    """The execution context a listener gets for a direct statement.

    It has what instrumentations read of SQLAlchemy's (`connection`, `cursor`, `statement`, `parameters`,
    `executemany`, `compiled`) and takes any attribute a listener sets on it, for the statement's duration.
    """

    executemany = False
    compiled = None  # a text statement compiled once, outside any execution

    def __init__(self, connection: Connection, cursor: Any, statement: str,
                 parameters: Mapping[str, Any] | None) -> None:
        self.connection = self.root_connection = connection
        self.dialect = connection.dialect
        self.cursor = cursor
        self.statement = statement
        self.parameters = parameters

    def handle_dbapi_exception(self, e: BaseException) -> None:
        """Called by SQLAlchemy on a failed statement's context; nothing to clean up here."""


def _sql(conn: Connection, statement: TextClause) -> str:
    sql = _compiled.get(statement)
    if sql is None:  # `:name` becomes `%(name)s`, a literal `%` becomes `%%`: the dialect's own compiler
        sql = str(statement.compile(dialect=conn.dialect))
        if len(_compiled) >= COMPILED_MAX:
            del _compiled[next(iter(_compiled))]
        _compiled[statement] = sql
    return sql


def _cursor(conn: Connection) -> Any:
    """A cursor on psycopg's connection under `conn`, in `conn`'s transaction.

    `conn.connection` raises SQLAlchemy's own error for a closed connection, or for one invalidated in this
    transaction (which must be rolled back first), as `conn.execute` would.
    """
    if not conn.in_transaction():
        conn.begin()  # as SQLAlchemy's own execute would: then `conn.commit()` commits this statement's work
    pooled = conn.connection
    info = pooled.info
    cursor = info.get(CURSOR)
    if cursor is None or cursor.closed:
        cursor = info[CURSOR] = pooled.driver_connection.cursor(row_factory=namedtuple_row)  # type: ignore[union-attr]
    return cursor


def _execute(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None, *, fetch: bool) -> Any:
    """Run `statement`; its rows when `fetch` (none for a statement that returns none), else its row count."""
    cursor = _cursor(conn)
    sql = _sql(conn, statement)
    dispatch = conn.dispatch
    context = None
    try:
        if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            context = DirectContext(conn, cursor, sql, params)
            for listener in dispatch.before_cursor_execute:
                sql, params = listener(conn, cursor, sql, params, context, False)
            context.statement, context.parameters = sql, params
        cursor.execute(sql, params)
        if context is not None:
            dispatch.after_cursor_execute(conn, cursor, sql, params, context, False)
        if not fetch:
            return cursor.rowcount
        return cursor.fetchall() if cursor.description is not None else []
    except BaseException as exc:
        # SQLAlchemy's own handling of a failed statement: wraps a driver error in DBAPIError (and leaves any
        # other error as it is, given a context), runs the `handle_error` listeners, and invalidates the
        # connection (and the pool's older ones) on a disconnect.
        if context is None:
            context = DirectContext(conn, cursor, sql, params)
        conn._handle_dbapi_exception(exc, sql, params, cursor, context)  # type: ignore[arg-type]


def rows(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None = None) -> list[Any]:
    """Every row `statement` returns (none for a statement that returns no rows)."""
    found: list[Any] = _execute(conn, statement, params, fetch=True)
    return found


def first(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None = None) -> Any | None:
    """The first row `statement` returns, or None."""
    found = rows(conn, statement, params)
    return found[0] if found else None


def run(conn: Connection, statement: TextClause, params: Mapping[str, Any] | None = None) -> int:
    """Execute `statement` for its effect; the number of rows it touched."""
    return int(_execute(conn, statement, params, fetch=False))


@contextmanager
def savepoint(conn: Connection, *, released: bool = True) -> Iterator[None]:
    """Run the block in a savepoint: kept when it ends, rolled back (and the error raised) when it raises.

    The transaction is usable after a block that failed, whatever the block ran (direct statements or
    SQLAlchemy's). A connection invalidated inside the block is left alone: its transaction is lost as a
    whole, and the error that lost it propagates.

    With `released=False` a block that ends leaves its savepoint open until the transaction ends, a round
    trip less (the ingest's attempts at a batch: one per job). Releasing changes nothing that commits: a
    released subtransaction's work and ids stay the transaction's either way. Such blocks must follow one
    another, not nest: a failing one rolls back to the latest of them.
    """
    run(conn, SAVEPOINT if released else ATTEMPT)
    try:
        yield
    except BaseException:
        if not conn.invalidated and not conn.closed:
            run(conn, ROLLBACK_TO_SAVEPOINT if released else ROLLBACK_TO_ATTEMPT)
            if released:
                run(conn, RELEASE_SAVEPOINT)
        raise
    if released:
        run(conn, RELEASE_SAVEPOINT)
