"""Whose fault is a failure: the event's, or the moment's.

An ingest batch that fails is redone event by event, so that the event at fault alone is set aside and
the others are stored. That is right only when the failure belongs to an event. Some failures say nothing
about any event: the connection was lost, a lock wait timed out, a deadlock or a serialization conflict
was broken, a statement was canceled, the server is shutting down or out of resources. Those are
transient: the whole job retries later and every event in it stays where it was. Everything else that
fails while one event is being stored (a value the database refuses, a column that cannot be built, a bug
on that event's path) is that event's fault.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import DBAPIError

# SQLSTATE classes about the moment, not the data: 08 connection exception, 40 transaction rollback
# (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention (query canceled,
# admin shutdown), 58 system error.
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
LOCK_NOT_AVAILABLE = "55P03"


def is_transient(exc: BaseException) -> bool:
    """True when retrying the whole job later may succeed: nothing here is any one event's fault."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # raised by the client, not the server: the connection broke
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in TRANSIENT_CLASSES or state == LOCK_NOT_AVAILABLE


def describe(exc: BaseException) -> str:
    """One line for `inbound_events.error`: the error's type and message, storable as PostgreSQL text.

    A database error is described by the driver's own error, without the statement and its parameters
    (which, in a batch, hold other events' data).
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]
