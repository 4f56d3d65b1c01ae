"""Tenant isolation is enforced by PostgreSQL itself, for every table that has a tenant_id."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from db.tenancy import TenantId, UnknownTenant, bind_tenant, resolve_tenant
from pipelines.crypto import SecretBox
from tests.factories import TenantRows, new_inbox, seed_tenant


def tenant_tables(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY table_name"
        ))
        return [r[0] for r in rows]


def seeded(rows: TenantRows, table: str) -> tuple[str, dict[str, object]]:
    """A condition that names the seeded row of `table`: by its id, or a token claim by its token."""
    if table == "replay_tokens":
        return "token = :key", {"key": str(rows.ids[table])}
    if table == "change_feed_heads":
        return "tenant_id = :key", {"key": rows.ids[table]}
    return "id = :key", {"key": rows.ids[table]}


@pytest.fixture(scope="module")
def two_tenants(app_engine: Engine) -> tuple[TenantRows, TenantRows]:
    box = SecretBox(os.environ["INTAKE_SECRET_KEY"])
    with app_engine.begin() as conn:
        a = seed_tenant(conn, box, "Tenant A")
    with app_engine.begin() as conn:
        b = seed_tenant(conn, box, "Tenant B")
    return a, b


def test_the_fleet_role_is_subject_to_row_level_security(app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        row = conn.execute(text(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )).one()
    assert row == ("intake_app", False, False)


def test_every_tenant_table_forces_row_level_security(admin_engine: Engine) -> None:
    tables = tenant_tables(admin_engine)
    assert len(tables) >= 16
    with admin_engine.connect() as conn:
        flags = dict(conn.execute(text(
            "SELECT relname, relrowsecurity AND relforcerowsecurity FROM pg_class "
            "WHERE relname = ANY(:t) AND relkind = 'r'"
        ), {"t": tables}).all())
    assert flags == {t: True for t in tables}


def test_the_seed_covers_every_tenant_table(admin_engine: Engine, two_tenants: tuple[TenantRows, ...]) -> None:
    # A new tenant-scoped table must get a row in the seed, so the isolation tests below cover it.
    assert set(tenant_tables(admin_engine)) == set(two_tenants[0].ids) | {"inboxes"}


def test_without_a_tenant_every_table_looks_empty(
    app_engine: Engine, admin_engine: Engine, two_tenants: tuple[TenantRows, ...]
) -> None:
    with app_engine.begin() as conn:
        for table in [*tenant_tables(admin_engine), "tenants"]:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0, table


def test_a_tenant_sees_only_its_own_rows(
    app_engine: Engine, admin_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    a, b = two_tenants
    for table in tenant_tables(admin_engine):
        with app_engine.begin() as conn:
            bind_tenant(conn, a.tenant_id)
            tenants = {r[0] for r in conn.execute(text(f"SELECT tenant_id FROM {table}"))}
            assert tenants == {a.tenant_id}, table
            where, key = seeded(b, table)
            seen = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), key)
            assert seen.scalar_one() == 0, table


def test_a_tenant_cannot_update_or_delete_another_tenants_rows(
    app_engine: Engine, admin_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    a, b = two_tenants
    for table in tenant_tables(admin_engine):
        with app_engine.begin() as conn:
            bind_tenant(conn, a.tenant_id)
            where, key = seeded(b, table)
            updated = conn.execute(text(f"UPDATE {table} SET tenant_id = tenant_id WHERE {where}"), key)
            deleted = conn.execute(text(f"DELETE FROM {table} WHERE {where}"), key)
            assert (updated.rowcount, deleted.rowcount) == (0, 0), table
    with admin_engine.begin() as conn:
        for table in tenant_tables(admin_engine):
            where, key = seeded(b, table)
            count = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), key)
            assert count.scalar_one() == 1, table


def test_a_tenant_cannot_move_its_rows_to_another_tenant(
    app_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    a, b = two_tenants
    with app_engine.connect() as conn, pytest.raises(ProgrammingError, match="row-level security"):
        with conn.begin():
            bind_tenant(conn, a.tenant_id)
            conn.execute(text("UPDATE contacts SET tenant_id = :b WHERE id = :id"),
                         {"b": b.tenant_id, "id": a.ids["contacts"]})


@pytest.mark.parametrize("table", ["teams", "contacts", "audit_logs", "ai_usage"])
def test_a_tenant_cannot_insert_rows_for_another_tenant(
    app_engine: Engine, two_tenants: tuple[TenantRows, TenantRows], table: str
) -> None:
    a, b = two_tenants
    values = {
        "teams": "(tenant_id, name) VALUES (:b, 'x')",
        "contacts": "(tenant_id) VALUES (:b)",
        "audit_logs": "(tenant_id, actor, action, subject_type, subject_id) VALUES (:b, 'a', 'b', 'c', 'd')",
        "ai_usage": "(tenant_id, feature, provider, model) VALUES (:b, 'f', 'p', 'm')",
    }[table]
    with app_engine.connect() as conn, pytest.raises(ProgrammingError, match="row-level security"):
        with conn.begin():
            bind_tenant(conn, a.tenant_id)
            conn.execute(text(f"INSERT INTO {table} {values}"), {"b": b.tenant_id})


def test_every_tenant_table_refuses_foreign_inserts(
    app_engine: Engine, admin_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    # Copy each of B's rows as it is, while bound to A: the policy's WITH CHECK refuses every one.
    a, b = two_tenants
    for table in tenant_tables(admin_engine):
        where, key = seeded(b, table)
        with admin_engine.connect() as conn:
            row = conn.execute(text(f"SELECT * FROM {table} WHERE {where}"), key).mappings().one()
        values = {k: v for k, v in row.items() if k not in ("id", "search_vector")}
        if table == "replay_tokens":
            values["token"] = uuid.uuid4().hex
        elif table != "change_feed_heads":  # keyed by its tenant alone
            values["id"] = uuid.uuid4()
        cols = ", ".join(values)
        params = ", ".join(f":{k}" for k in values)
        with app_engine.connect() as conn, pytest.raises(DBAPIError):
            with conn.begin():
                bind_tenant(conn, a.tenant_id)
                conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({params})"), values)


def test_the_tenant_setting_does_not_outlive_its_transaction(
    app_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    a, _ = two_tenants
    with app_engine.connect() as conn:
        with conn.begin():
            bind_tenant(conn, a.tenant_id)
            assert conn.execute(text("SELECT count(*) FROM contacts")).scalar_one() == 2  # the seed's two
        with conn.begin():
            assert conn.execute(text("SELECT count(*) FROM contacts")).scalar_one() == 0


def test_resolve_tenant_refuses_unknown_and_malformed_ids(app_engine: Engine) -> None:
    with app_engine.begin() as conn:
        with pytest.raises(UnknownTenant):
            resolve_tenant(conn, uuid.uuid4())
        with pytest.raises(UnknownTenant):
            resolve_tenant(conn, "not-a-uuid")


def test_inbox_routing_reveals_only_the_named_inbox(
    app_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    a, b = two_tenants
    with app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.inbox_id', :i, true)"), {"i": str(b.inbox.id)})
        rows = conn.execute(text("SELECT id, tenant_id FROM inboxes")).all()
        assert rows == [(b.inbox.id, b.tenant_id)]
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar_one() == 0
    assert isinstance(a.tenant_id, uuid.UUID) and TenantId(a.tenant_id) == a.tenant_id


def test_routing_an_inbox_reads_it_and_its_tenant_s_standing_and_leaves_nothing_set(
    app_engine: Engine, admin_engine: Engine, two_tenants: tuple[TenantRows, TenantRows]
) -> None:
    """`intake_route_inbox`, the ingress's inbox look-up: the named inbox and whether its tenant is enabled,
    nothing for an id no inbox has, and both settings gone with the statement's own transaction."""
    _, b = two_tenants
    disabled = new_inbox(app_engine, "api")
    with admin_engine.begin() as conn:
        conn.execute(text("UPDATE tenants SET disabled_at = now() WHERE id = :t"), {"t": disabled.tenant_id})
    route = text("SELECT * FROM intake_route_inbox(:i)")
    with app_engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        row = conn.execute(route, {"i": b.inbox.id}).one()
        assert (row.tenant_id, row.channel, row.enabled, row.tenant_active) == (b.tenant_id, "api", True, True)
        assert SecretBox(os.environ["INTAKE_SECRET_KEY"]).open(row.secrets) == b.inbox.secrets
        row = conn.execute(route, {"i": disabled.id}).one()
        assert (row.tenant_id, row.tenant_active) == (disabled.tenant_id, False)
        assert conn.execute(route, {"i": uuid.uuid4()}).all() == []
        settings = conn.execute(text("SELECT current_setting('app.inbox_id', true), "
                                     "current_setting('app.tenant_id', true)")).one()
        assert all(not value for value in settings)
        assert conn.execute(text("SELECT count(*) FROM inboxes")).scalar_one() == 0
