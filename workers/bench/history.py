"""Years of stored traffic, loaded with COPY, so the fleet's queries meet tables of realistic size.

Messages are spread over the tenants by the weights given (a few large tenants, a long tail of small ones).
Each tenant gets one contact (with one identity, of its inbox's kind) per ten messages, two conversations per
contact (an older resolved one and an open one, with true counters and times), and one processed inbound
event per message, whose raw body is kept. Ids are sequential (like UUIDv7) and times run over the past
year in order, as a table grown by the fleet has them. The five tables are loaded consistently in one
transaction; the plain (non-constraint) indexes are dropped first and built again after, as a bulk load
does, and the tables are vacuumed and analyzed, as autovacuum would have done over the year.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

TABLES = ("contacts", "contact_identities", "conversations", "inbound_events", "messages")
# The channel's identity kind: what its senders are known by.
KINDS = {"api": "email", "telegram": "telegram", "twilio": "phone", "whatsapp": "phone", "postmark": "email"}
FIRST = ("Anna", "Ben", "Chen", "Dana", "Eero", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Mateo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tuula")
LAST = ("Smith", "Virtanen", "Garcia", "Müller", "Kim", "Nguyen", "Okafor", "Rossi", "Silva", "Jensen",
        "Novak", "Haddad", "Tanaka", "Ivanova", "Kowalski", "Larsen", "Moreau", "Patel", "Cohen", "Dubois")
TEXTS = ("Hi, where is my order?", "I was charged twice", "Thanks, all good now", "Can I change my address?",
         "The app crashes on login", "Tilaukseni on myöhässä", "¿Dónde está mi pedido?", "Rechnung ist falsch")
BODY = "\\\\x" + ('{"text":"' + "x" * 240 + '"}').encode().hex()  # a raw event body of ordinary size
YEAR = timedelta(days=365)


@dataclass(frozen=True)
class Tenant:
    id: str
    inboxes: dict[str, str]  # channel -> inbox id


class Ids:
    """Sequential UUIDs, one series per table, continuing across loads."""

    def __init__(self, base: int) -> None:
        self._next = {table: 0 for table in TABLES}
        self._base = base
        self.serial = itertools.count()  # numbers the names, identities and provider ids

    def take(self, table: str) -> str:
        n = self._next[table]
        self._next[table] = n + 1
        return f"b{TABLES.index(table):07x}-{self._base:04x}-7000-8000-{n:012x}"


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split by `weights`, each share whole and the sum exact."""
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in range(total - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def _at(moment: datetime) -> str:
    return moment.isoformat()


class Writer:
    """COPY text for one tenant's history at a time, in the order the foreign keys need."""

    def __init__(self, ids: Ids, now: datetime) -> None:
        self.ids = ids
        self.now = now
        self.rows: dict[str, list[str]] = {table: [] for table in TABLES}

    def tenant(self, tenant: Tenant, messages: int) -> None:
        if messages == 0:
            return
        channels = sorted(tenant.inboxes)
        contacts = max(1, messages // 10)
        start = self.now - YEAR
        step = YEAR / (messages + 1)
        # Message j goes to contact j % contacts, in its older conversation for the first half of the year.
        conversations = []
        for k in range(contacts):
            channel = channels[k % len(channels)]
            contact = self._contact(tenant, k, channel, start)
            for _ in range(2):  # the older, resolved one first
                conversations.append((self.ids.take("conversations"), contact, tenant.inboxes[channel], channel))
        counts = [0] * len(conversations)
        first: list[int | None] = [None] * len(conversations)
        last = [0] * len(conversations)
        half = messages // 2
        for j in range(messages):
            c = 2 * (j % contacts) + (j >= half)
            counts[c] += 1
            if first[c] is None:
                first[c] = j
            last[c] = j
        for c, (conversation_id, contact, inbox, _) in enumerate(conversations):
            older = c % 2 == 0
            begun = first[c]
            if begun is None:
                continue
            opened, closed = start + step * begun, start + step * last[c]
            self.rows["conversations"].append("\t".join((
                conversation_id, tenant.id, inbox, contact, "resolved" if older else "open", str(counts[c]),
                str(counts[c]), _at(opened), _at(closed), _at(closed), _at(opened), _at(closed),
                _at(closed) if older else "\\N")))
        for j in range(messages):
            c = 2 * (j % contacts) + (j >= half)
            conversation_id, contact, inbox, channel = conversations[c]
            self._message(tenant, inbox, channel, conversation_id, contact, start + step * j)

    def _contact(self, tenant: Tenant, k: int, channel: str, start: datetime) -> str:
        contact = self.ids.take("contacts")
        n = next(self.ids.serial)
        name = f"{FIRST[n % len(FIRST)]} {LAST[(n // len(FIRST)) % len(LAST)]}"
        self.rows["contacts"].append(f"{contact}\t{tenant.id}\t{name}\t{_at(start)}\t{_at(start)}")
        kind = KINDS[channel]
        values = {"email": f"h{n}@history.example.org", "phone": f"+1206{n:07d}", "telegram": str(9_000_000_000 + n)}
        value = values[kind]
        self.rows["contact_identities"].append(
            f"{self.ids.take('contact_identities')}\t{tenant.id}\t{contact}\t{kind}\t{value}\t{_at(start)}")
        return contact

    def _message(self, tenant: Tenant, inbox: str, channel: str, conversation: str, contact: str,
                 sent: datetime) -> None:
        n = next(self.ids.serial)
        event = self.ids.take("inbound_events")
        key = f"h{n}"
        at = _at(sent)
        self.rows["inbound_events"].append(
            f"{event}\t{tenant.id}\t{inbox}\t{channel}\t{key}\tapplication/json\t{{}}\t{BODY}\tprocessed\t1\t"
            f"{at}\t{at}\t{at}")
        self.rows["messages"].append(
            f"{self.ids.take('messages')}\t{tenant.id}\t{inbox}\t{conversation}\t{contact}\t{event}\tinbound\ttext\t"
            f"{key}\t{TEXTS[n % len(TEXTS)]}\treceived\t{at}\t{at}\t{at}")

    def drain(self) -> Iterator[tuple[str, str]]:
        for table in TABLES:
            if self.rows[table]:
                yield table, "\n".join(self.rows[table]) + "\n"
                self.rows[table] = []


COLUMNS = {
    "contacts": "id, tenant_id, display_name, created_at, updated_at",
    "contact_identities": "id, tenant_id, contact_id, kind, value, created_at",
    "conversations": "id, tenant_id, inbox_id, contact_id, status, message_count, inbound_count, first_message_at, "
                     "last_message_at, last_inbound_at, created_at, updated_at, resolved_at",
    "inbound_events": "id, tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, status, attempts, "
                      "received_at, enqueued_at, processed_at",
    "messages": "id, tenant_id, inbox_id, conversation_id, contact_id, event_id, direction, kind, external_id, "
                "content, status, sent_at, received_at, stored_at",
}


def _plain_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(name, definition) of the indexes of the loaded tables that no constraint owns."""
    return [(str(name), str(definition)) for name, definition in conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY(%s::regclass[]) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)", (list(TABLES),))]


def _copy(conn: psycopg.Connection[Any], writer: Writer) -> None:
    for table, text in writer.drain():
        with conn.cursor().copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
            copy.write(text.encode())


def load(admin_url: str, tenants: Sequence[Tenant], weights: Sequence[float], messages: int, *, ids: Ids,
         chunk_rows: int = 100_000) -> None:
    """Add `messages` stored messages (and their events, contacts and conversations) to `tenants`."""
    now = datetime.now(UTC)
    with psycopg.connect(admin_url) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        # As pg_restore --disable-triggers: the rows are consistent by construction, and checking each
        # foreign key row by row would take longer than the load.
        conn.execute("SET session_replication_role = replica")
        indexes = _plain_indexes(conn)
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        writer = Writer(ids, now)
        counts = shares(messages, weights)
        for tenant, n in zip(tenants, counts, strict=True):
            writer.tenant(tenant, n)
            if len(writer.rows["messages"]) >= chunk_rows:
                _copy(conn, writer)
        _copy(conn, writer)
        for _, definition in indexes:
            conn.execute(definition)
        conn.commit()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
