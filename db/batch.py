"""Parameters for set-wise statements: a batch's rows as one JSON document, its ids as one array literal.

psycopg adapts a list parameter element by element in Python: 2.3 us an element of text, 2.6 of uuid, 6.3
of jsonb and 8.4 of timestamptz, so the 100 rows of 15 columns of one message insert cost the worker about
4 ms of CPU before a byte was sent. orjson writes the same rows in about 0.2 ms (uuids, datetimes and
nested objects natively) and PostgreSQL reads them back with `json_to_recordset`, for a little less of its
own CPU than 15 array literals take to parse:

    INSERT INTO t (a, b) SELECT a, b FROM json_to_recordset(CAST(:rows AS json)) AS r(a uuid, b timestamptz)

A list of ids becomes the literal `{id,id,...}`, sent typed as uuid[] (`UuidArray`, whose dumper the engine
registers), so that in `id = ANY(:ids)` the planner knows how many ids there are: `json_to_recordset` it
guesses at 100 rows, so a statement that joins a table to a batch names the ids as well, to be read by index.

Text must be storable (no NUL, no lone surrogate; see `pipelines.channels.base.storable`): JSON could
carry a NUL as \\u0000, which PostgreSQL refuses in text, and orjson refuses a lone surrogate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from psycopg import postgres
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper


def rows(records: Iterable[Mapping[str, Any]]) -> str:
    """`records` as a JSON array of objects, for `json_to_recordset(CAST(:param AS json))`."""
    return orjson.dumps(list(records), default=str).decode()


class UuidArray(str):
    """The text of a uuid[] value, sent as one."""


class UuidArrayDumper(Dumper):
    oid = postgres.types["uuid"].array_oid

    def dump(self, obj: str) -> bytes:
        return obj.encode()


def register(context: AdaptContext) -> None:
    """Send `UuidArray` values typed as uuid[] on this connection (or every connection of an adapters map)."""
    context.adapters.register_dumper(UuidArray, UuidArrayDumper)


def uuids(ids: Iterable[uuid.UUID | str]) -> UuidArray:
    """`ids` as a uuid[] parameter; each must be a uuid or a uuid's text."""
    checked = [i if isinstance(i, uuid.UUID) else uuid.UUID(i) for i in ids]
    # orjson writes uuids in C (str() is Python code): '["a","b"]' becomes '{a,b}'.
    return UuidArray("{" + orjson.dumps(checked)[1:-1].decode().replace('"', "") + "}")
