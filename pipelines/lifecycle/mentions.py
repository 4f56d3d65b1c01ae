"""Where other people's rows mention an erased person: every text, JSON and bytea column of every tenant table,
redacted in place.

The tables come from `db.schema`, so a table or column added later is searched without a change here. A column
is left alone when changing it would break what the fleet relies on, and said so here:

- keys: primary, foreign and unique columns and unique indexes (provider ids that dedupe a late retry, a
  contact's identities, which the erasure deletes itself);
- secrets and digests, which hold no plain text (`inboxes.secrets`, `inboxes.previous_secrets`,
  `webhook_endpoints.secret` and `.previous_secret`, `api_keys.key_hash`, `knowledge_documents.content_hash`,
  `replay_tokens`' digest and key of a webhook token claimed for a few minutes): an identity that happens to
  be spelled inside a sealed token would otherwise be written over and the secret lost;
- a trained classifier (`ai_models.model`, compressed arrays): the erasure drops the tenant's models whole when
  their examples named the person (`pipelines.lifecycle.erasure`), and writing inside the archive breaks it;
- generated columns (they follow their source);
- the `contacts` table: the erased person's row is a tombstone already, and another contact who shares their
  name is another person.

A value is redacted where it names the person, except an email's quoted history (`messages.quoted_text`):
one that names them (its "Dave wrote:" line) is most likely their own words, and goes whole.

Each table is read once, for the rows in which some searchable column may name the person (a LIKE over the
lower-cased text, and over its digits for phones; bytea read through `encode(..., 'escape')`); the redactor
then decides, and a row is written only when a value changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    Column,
    ColumnElement,
    Connection,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    cast,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, array

from db.schema import metadata
from db.tenancy import TenantId
from pipelines.lifecycle.redaction import REDACTED, Redactor

SKIP_TABLES = frozenset({"contacts"})
SKIP_COLUMNS = frozenset({("inboxes", "secrets"), ("inboxes", "previous_secrets"), ("api_keys", "key_hash"),
                          ("webhook_endpoints", "secret"), ("webhook_endpoints", "previous_secret"),
                          ("knowledge_documents", "content_hash"), ("ai_models", "model"),
                          ("replay_tokens", "body_digest"), ("replay_tokens", "dedupe_key")})
NOT_DIGITS = "[^0-9]+"
# Columns that go whole when they name the person: an email's quoted history that names them (its "Dave
# wrote:" line) is most likely their own words.
WHOLE = frozenset({("messages", "quoted_text")})


@dataclass
class Redacted:
    """Rows changed per table, and the stored events whose own rows or messages were redacted."""

    rows: dict[str, int] = field(default_factory=dict)
    events: set[uuid.UUID] = field(default_factory=set)


def redact_mentions(conn: Connection, tenant: TenantId, redactor: Redactor) -> Redacted:
    """Write `[erased]` over the person wherever another row of the tenant mentions them."""
    done = Redacted()
    if redactor.empty:
        return done
    for table in metadata.sorted_tables:
        columns = searchable(table)
        if table.name in SKIP_TABLES or "tenant_id" not in table.c or not columns:
            continue
        keys = list(table.primary_key.columns)
        extra = [table.c.event_id] if table.name == "messages" else []
        found = conn.execute(select(*keys, *extra, *columns).where(
            table.c.tenant_id == tenant, or_(*(may_name(c, redactor) for c in columns)))).all()
        changed = 0
        for row in found:
            values = {c.name: _redacted(redactor, c, getattr(row, c.name)) for c in columns}
            values = {name: REDACTED if (table.name, name) in WHOLE else value
                      for name, value in values.items() if value != getattr(row, name)}
            if not values:
                continue
            conn.execute(update(table).where(*(k == getattr(row, k.name) for k in keys)).values(values))
            changed += 1
            if table.name == "inbound_events":
                done.events.add(row.id)
            elif extra and row.event_id is not None:
                done.events.add(row.event_id)
        if changed:
            done.rows[table.name] = changed
    return done


def searchable(table: Table) -> list[Column[Any]]:
    """The columns of `table` that may hold free text about a person (see the module's docstring)."""
    keys = {c.name for c in table.primary_key.columns} | {fk.parent.name for fk in table.foreign_keys}
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            keys |= {c.name for c in constraint.columns}
    for index in table.indexes:
        if index.unique:
            keys |= {c.name for c in index.columns}
    return [c for c in table.c if _textual(c) and c.name not in keys and c.computed is None
            and (table.name, c.name) not in SKIP_COLUMNS]


def _textual(column: Column[Any]) -> bool:
    kind = column.type
    if isinstance(kind, ARRAY):
        return isinstance(kind.item_type, String | Text)
    return isinstance(kind, String | Text | JSON | JSONB | LargeBinary)


def may_name(column: Column[Any], redactor: Redactor) -> ColumnElement[bool]:
    """A cheap SQL test that is true for every value the redactor would change (and for a few it would not)."""
    raw = isinstance(column.type, LargeBinary)
    value = func.encode(column, "escape") if raw else cast(column, Text)
    tests = []
    likes = _escaped(redactor.likes) if raw else list(redactor.likes)
    if likes:
        tests.append(func.lower(value).like(any_(array(likes))))
    if redactor.digits:
        tests.append(func.regexp_replace(value, NOT_DIGITS, "", "g").like(any_(array(list(redactor.digits)))))
    return or_(*tests)


def _escaped(likes: Iterable[str]) -> list[str]:
    """LIKE patterns as `encode(bytea, 'escape')` writes the needles' UTF-8 bytes: `\\ooo` for each byte past
    ASCII (and the backslash doubled, as LIKE reads it)."""
    return ["".join(c if ord(c) < 0x80 else "".join(f"\\\\{b:03o}" for b in c.encode()) for c in like)
            for like in likes]


def _redacted(redactor: Redactor, column: Column[Any], value: Any) -> Any:
    if value is None:
        return None
    if isinstance(column.type, LargeBinary):
        return redactor.raw(bytes(value))
    if isinstance(column.type, JSON | JSONB):
        return redactor.json(value)
    if isinstance(value, list):
        return [redactor.text(v) if isinstance(v, str) else v for v in value]
    return redactor.text(value) if isinstance(value, str) else value
