"""Engines and transactions, built from URLs handed in by the caller (nothing global here)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from db import batch


def sqlalchemy_url(url: str) -> str:
    """Point a plain postgresql:// URL at the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def driver_options(*, prepared_statements: bool) -> dict[str, Any]:
    """psycopg's connection options for INTAKE_DB_PREPARED_STATEMENTS, for every connection the fleet makes.

    psycopg prepares a statement (a named server-side statement, `_pg3_N`) after it has run five times on a
    connection. Behind PgBouncer in transaction mode (before 1.21) the next transaction may run on another
    server connection, where that name is missing or, worse, names another statement whose rows then come
    back: `prepare_threshold=None` keeps every statement unnamed, which any pooler serves. Nothing else
    changes: the fleet sets its tenant with `set_config(..., true)` and takes only transaction-level advisory
    locks, which end with the transaction that a pooler keeps on one server connection.
    """
    return {} if prepared_statements else {"prepare_threshold": None}


def make_engine(url: str, *, prepared_statements: bool, pool_size: int = 5,
                application_name: str = "intake") -> Engine:
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"application_name": application_name, "connect_timeout": 5,
                      **driver_options(prepared_statements=prepared_statements)},
    )
    event.listen(engine, "connect", _on_connect)
    return engine


def _on_connect(dbapi_connection: Any, record: Any) -> None:
    batch.register(dbapi_connection)

