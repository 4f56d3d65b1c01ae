"""The ingest look-ups that must not grow with the tables use their indexes as the fleet's role runs them.

Under row-level security PostgreSQL applies a condition before the policy's own only when it is
leakproof, and it chooses plans from statistics that, on a large table, say that almost no event is
waiting. Each test builds a few thousand rows, analyzes them, and reads the plan of the real statement as
`intake_app` bound to a tenant: the plan PostgreSQL would choose in production, not one forced by settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, text

from db import batch
from db.tenancy import bind_tenant
from pipelines.contacts import LOOK_ALIKES, LOOKUP, record_duplicate_candidates
from pipelines.conversations import OPEN_MANY, REOPENABLE_MANY
from pipelines.inboxes import CreatedInbox
from pipelines.ingest import COUNT_MESSAGES, TAKE
from pipelines.lifecycle.sla import START
from tests.factories import new_inbox


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan that reads a table. A bitmap heap scan names the index its bitmap came
    from (as "Index Name", like an index scan), so how a table is read is one node whatever the plan's shape."""
    if "Relation Name" in plan:
        bitmaps = sorted(bitmap_indexes(plan)) if plan.get("Node Type") == "Bitmap Heap Scan" else []
        yield {**plan, "Index Name": plan.get("Index Name") or ",".join(bitmaps) or None}
    for child in plan.get("Plans", []):
        yield from scans(child)


def bitmap_indexes(plan: dict[str, Any]) -> Iterator[str]:
    """The indexes a bitmap heap scan's bitmap is built from (one, or several under BitmapAnd/BitmapOr)."""
    for child in plan.get("Plans", []):
        if child.get("Node Type") == "Bitmap Index Scan":
            yield child["Index Name"]
        elif child.get("Node Type") in ("BitmapAnd", "BitmapOr"):
            yield from bitmap_indexes(child)


def plan_of(conn: Connection, statement: TextClause, params: dict[str, Any], *, analyze: bool = False) -> list[
        dict[str, Any]]:
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    (document,) = conn.execute(text(f"EXPLAIN ({options}) {statement.text}"), params).scalar_one()
    return list(scans(document["Plan"]))


def analyze(admin_engine: Engine, table: str) -> None:
    with admin_engine.begin() as conn:
        conn.execute(text(f"ANALYZE {table}"))


def test_a_new_contacts_namesakes_are_found_through_the_name_index(app_engine: Engine, admin_engine: Engine) -> None:
    tenant = new_inbox(app_engine, "api").tenant_id
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("INSERT INTO contacts (tenant_id, display_name) "
                          "SELECT :t, 'Person ' || (g % 300) FROM generate_series(1, 3000) AS g"), {"t": tenant})
        conn.execute(text("INSERT INTO contacts (tenant_id, display_name) VALUES (:t, 'Åsa Öberg')"), {"t": tenant})
    analyze(admin_engine, "contacts")
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        nodes = plan_of(conn, LOOK_ALIKES, {"t": tenant, "ids": [uuid.uuid4()], "names": ["PERSON 7"]})
        (read,) = [n for n in nodes if n["Relation Name"] == "contacts"]
        assert "contacts_tenant_name_key_idx" in (read.get("Index Name") or "").split(","), read
        new = [conn.execute(text("INSERT INTO contacts (tenant_id, display_name) VALUES (:t, :n) RETURNING id"),
                            {"t": tenant, "n": name}).scalar_one() for name in ("PERSON 7", "ÅSA ÖBERG")]
        # Names compare case-insensitively as before: ten "Person 7" (3000 / 300) and the one Åsa Öberg.
        assert record_duplicate_candidates(conn, tenant, [(new[0], "PERSON 7", [("email", "p7@example.com")]),
                                                          (new[1], "ÅSA ÖBERG", [("phone", "+46701234567")])]) == 11


def add_events(admin_engine: Engine, inboxes: list[CreatedInbox], count: int, status: str) -> None:
    """`count` events in turn over `inboxes`: the tenants' rows interleave in the table, as the fleet writes them."""
    with admin_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, status) "
            "SELECT (:tenants)[1 + g % :k], (:inboxes)[1 + g % :k], 'api', :prefix || g, 'application/json', '{}', "
            "'\\x7b7d', :status FROM generate_series(1, :n) AS g"),
            {"tenants": [i.tenant_id for i in inboxes], "inboxes": [i.id for i in inboxes], "k": len(inboxes),
             "prefix": f"{status}-{uuid.uuid4().hex}-", "status": status, "n": count})


def test_a_job_tops_up_from_its_own_tenants_waiting_events_only(app_engine: Engine, admin_engine: Engine) -> None:
    mine, theirs = new_inbox(app_engine, "api"), new_inbox(app_engine, "api")
    add_events(admin_engine, [mine, theirs], 4000, "processed")
    analyze(admin_engine, "inbound_events")  # as on a large table: hardly any event waits
    add_events(admin_engine, [theirs], 400, "received")  # another tenant's backlog
    add_events(admin_engine, [mine], 3, "received")
    # The top-up runs inside intake_ingest_take (migration 0022), whose plans EXPLAIN does not show: the
    # transaction's own statistics count what it read instead.
    with app_engine.connect() as conn, conn.begin():
        taken = conn.execute(TAKE, {"t": mine.tenant_id, "ids": "{}", "statuses": ["received"], "wait": "1000",
                                    "n": 200}).all()
        ((seq_scans, waiting_scans, entries),) = conn.execute(text(
            "SELECT pg_stat_get_xact_numscans('inbound_events'::regclass), "
            "pg_stat_get_xact_numscans('inbound_events_waiting_idx'::regclass), "
            "(SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index "
            " WHERE indrelid = 'inbound_events'::regclass)")).all()
        conn.rollback()
    assert len(taken) == 3 and not any(row.own for row in taken)
    # Its three, read through the waiting index: three index entries of all the table's indexes, none of the
    # other tenant's 400.
    assert (seq_scans, waiting_scans, entries) == (0, 1, 3)


@contextmanager
def tables_of_size(admin_engine: Engine, count: int) -> Iterator[tuple[Connection, uuid.UUID, list[Any], list[Any]]]:
    """A connection that sees contacts, contact_identities and conversations of `count` rows each (one tenant,
    every contact with an email and a conversation, open or resolved) in a schema of their own, analyzed, whatever
    the shared tables hold; with 50 of the conversations and 50 of the identities, as a batch would name them.
    Read as the superuser (row-level security off): the join the planner chooses is the question here."""
    schema = f"plans_{uuid.uuid4().hex[:12]}"
    tenant, inbox = uuid.uuid4(), uuid.uuid4()
    with admin_engine.connect() as conn:
        try:
            with conn.begin():
                conn.execute(text(f"CREATE SCHEMA {schema}"))
                for table in ("contacts", "contact_identities", "conversations"):
                    conn.execute(text(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING DEFAULTS "
                                      "INCLUDING INDEXES)"))
                conn.execute(text(f"""
                    WITH c AS (INSERT INTO {schema}.contacts (tenant_id, display_name)
                               SELECT :t, 'Person ' || g FROM generate_series(1, :n) AS g RETURNING id, display_name),
                         i AS (INSERT INTO {schema}.contact_identities (tenant_id, contact_id, kind, value)
                               SELECT :t, id, 'email', lower(replace(display_name, ' ', '')) || '@example.com'
                               FROM c)
                    INSERT INTO {schema}.conversations (tenant_id, inbox_id, contact_id, status, resolved_at)
                    SELECT :t, :inbox, id, s, CASE WHEN s = 'resolved' THEN now() END
                    FROM (SELECT id, CASE WHEN random() < 0.3 THEN 'resolved' ELSE 'open' END AS s FROM c) AS c
                    """), {"t": tenant, "inbox": inbox, "n": count})
            conn.execute(text(f"ANALYZE {schema}.contacts, {schema}.contact_identities, {schema}.conversations"))
            conn.commit()
            with conn.begin():
                conn.execute(text(f"SET LOCAL search_path = {schema}, public"))
                pairs = conn.execute(text("SELECT id, inbox_id, contact_id FROM conversations LIMIT 50")).all()
                emails = conn.execute(text("SELECT kind, value FROM contact_identities LIMIT 50")).all()
                yield conn, tenant, pairs, emails
        finally:
            conn.rollback()
            with conn.begin():
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def index_reads(conn: Connection, statements: dict[str, tuple[TextClause, dict[str, Any]]]) -> None:
    for name, (statement, params) in statements.items():
        reads = [n for n in plan_of(conn, statement, params) if n["Node Type"] != "ModifyTable"
                 and n["Relation Name"] in ("contact_identities", "conversations")]
        assert reads and all(n["Node Type"] != "Seq Scan" and n.get("Index Name") for n in reads), (name, reads)


def test_a_batch_finds_its_contacts_and_conversations_by_index_whatever_the_row_guess(admin_engine: Engine) -> None:
    """A batch's rows arrive as one JSON document, which the planner guesses at 100 rows. Joined as such to a
    tenant's few thousand contacts or conversations, a hash join that reads them all looks cheaper than 100
    index probes (and the planner flattens a LATERAL subquery into such a join): the look-ups must probe, so
    that their cost follows the batch, not the table. The updates name their rows' ids as an array as well,
    whose length the planner knows: the two conversations of a small job are two probes, not a scan."""
    with tables_of_size(admin_engine, 3000) as (conn, tenant, pairs, emails):
        ids = [p.id for p in pairs[:2]]
        index_reads(conn, {
            "LOOKUP": (LOOKUP, {"tenant": tenant, "wanted": batch.rows({"kind": k, "value": v} for k, v in emails)}),
            "OPEN_MANY": (OPEN_MANY, {"t": tenant, "pairs": batch.rows(
                {"inbox_id": p.inbox_id, "contact_id": p.contact_id} for p in pairs)}),
            "REOPENABLE_MANY": (REOPENABLE_MANY, {"t": tenant, "pairs": batch.rows(
                {"inbox_id": p.inbox_id, "contact_id": p.contact_id, "since": "2020-01-01T00:00:00Z"}
                for p in pairs)}),
            "COUNT_MESSAGES": (COUNT_MESSAGES, {"t": tenant, "ids": batch.uuids(ids), "rows": batch.rows(
                {"id": i, "total": 1, "first_at": "2026-01-01T00:00:00Z", "last_at": "2026-01-01T00:00:00Z",
                 "subject": None} for i in ids)}),
            "START": (START, {"t": tenant, "ids": batch.uuids(ids), "rows": batch.rows(
                {"id": i, "at": "2026-01-01T00:00:00Z", "first_due": None, "resolution_due": None} for i in ids)}),
        })
