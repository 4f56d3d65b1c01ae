"""Migrations and the unique keys that make ingestion idempotent."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.exc import IntegrityError

from config import get_settings
from db import migrate, schema
from db.engine import make_engine
from db.tenancy import bind_tenant
from pipelines.crypto import SecretBox
from tests.factories import TenantRows, seed_tenant


@pytest.fixture
def seeded(app_engine: Engine) -> TenantRows:
    with app_engine.begin() as conn:
        return seed_tenant(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), "Schema tests")


@pytest.fixture
def conn(app_engine: Engine, seeded: TenantRows) -> Iterator[Connection]:
    with app_engine.connect() as connection:
        connection.begin()
        bind_tenant(connection, seeded.tenant_id)
        yield connection
        connection.rollback()


def rejects(conn: Connection, sql: str, params: dict[str, object]) -> bool:
    savepoint = conn.begin_nested()
    try:
        conn.execute(text(sql), params)
    except IntegrityError:
        savepoint.rollback()
        return True
    savepoint.commit()
    return False


def test_contact_identities_are_unique_per_tenant_kind_and_value(conn: Connection, seeded: TenantRows) -> None:
    sql = ("INSERT INTO contact_identities (tenant_id, contact_id, kind, value) "
           "VALUES (:t, :c, 'phone', '+14155550101')")
    params = {"t": seeded.tenant_id, "c": seeded.ids["contacts"]}
    assert not rejects(conn, sql, params)
    assert rejects(conn, sql, params)


def test_messages_are_unique_per_inbox_and_external_id(conn: Connection, seeded: TenantRows) -> None:
    sql = ("INSERT INTO messages (tenant_id, inbox_id, direction, external_id, sent_at) "
           "VALUES (:t, :i, 'inbound', 'SM123', :now)")
    params = {"t": seeded.tenant_id, "i": seeded.inbox.id, "now": datetime.now(UTC)}
    assert not rejects(conn, sql, params)
    assert rejects(conn, sql, params)


def test_inbound_events_are_unique_per_inbox_and_dedupe_key(conn: Connection, seeded: TenantRows) -> None:
    sql = ("INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body) "
           "VALUES (:t, :i, 'api', 'evt_1', '\\x7b7d')")
    params = {"t": seeded.tenant_id, "i": seeded.inbox.id}
    assert not rejects(conn, sql, params)
    assert rejects(conn, sql, params)


def test_one_open_conversation_per_contact_and_inbox(conn: Connection, seeded: TenantRows) -> None:
    insert = ("INSERT INTO conversations (tenant_id, inbox_id, contact_id, status) "
              "VALUES (:t, :i, :c, :status)")
    params = {"t": seeded.tenant_id, "i": seeded.inbox.id, "c": seeded.ids["contacts"]}
    # The seed already holds one open conversation for this contact and inbox.
    assert rejects(conn, insert, {**params, "status": "open"})
    assert not rejects(conn, insert, {**params, "status": "resolved"})
    assert not rejects(conn, insert, {**params, "status": "resolved"})
    conn.execute(text("UPDATE conversations SET status = 'resolved' WHERE id = :id"),
                 {"id": seeded.ids["conversations"]})
    assert not rejects(conn, insert, {**params, "status": "open"})


def test_knowledge_chunks_have_an_hnsw_index(admin_engine: Engine) -> None:
    with admin_engine.connect() as conn:
        indexdef = conn.execute(text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'knowledge_chunks' AND indexdef LIKE '%hnsw%'"
        )).scalar_one()
    assert "vector_cosine_ops" in indexdef


def test_migrations_upgrade_from_empty_and_downgrade_cleanly(stack: dict[str, str]) -> None:
    server_url = stack["INTAKE_ADMIN_DATABASE_URL"].replace("/intake?", "/postgres?")
    scratch = f"intake_migrations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {scratch}")
    url = stack["INTAKE_ADMIN_DATABASE_URL"].replace("/intake?", f"/{scratch}?")
    try:
        migrate.upgrade(url)
        with psycopg.connect(url) as db:
            tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"tenants", "messages", "knowledge_chunks", "job_failures", "audit_logs"} <= tables
        migrate.downgrade(url, "base")
        with psycopg.connect(url) as db:
            left = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert left == {"alembic_version"}
        migrate.upgrade(url)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {scratch} WITH (FORCE)")


# The declared schema (db/schema.py) against the migrated database.

@pytest.fixture
def declared(stack: dict[str, str]) -> MetaData:
    """The tables as declared, with embeddings as wide as the test database's migration made them."""
    return schema.metadata_for(get_settings().embedding_dim)


def test_the_declared_schema_matches_the_migrated_database(admin_engine: Engine, declared: MetaData) -> None:
    # Tables, columns, types, nullability, server defaults, generated columns (a differing expression
    # warns, and warnings are errors here), unique keys, foreign keys with their ON DELETE, index columns.
    with admin_engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, declared) == []


# What Alembic does not compare (check constraints, partial index predicates, index methods and operator
# classes), PostgreSQL's catalog does: the same tables created from the declared schema in an empty
# database describe themselves exactly as the migrated ones do.
CATALOG = {
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attgenerated
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relname = ANY(%(tables)s) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE conrelid::regclass::text = ANY(%(tables)s)""",
    "indexes": """
        SELECT tablename, indexname, indexdef
        FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY(%(tables)s)""",
}


def describe(url: str, declared: MetaData) -> dict[str, set[tuple[object, ...]]]:
    tables = sorted(declared.tables)
    with psycopg.connect(url) as db:
        return {kind: set(db.execute(sql, {"tables": tables}).fetchall()) for kind, sql in CATALOG.items()}


def test_the_declared_schema_creates_the_tables_the_migrations_create(
    stack: dict[str, str], declared: MetaData
) -> None:
    migrated = stack["INTAKE_ADMIN_DATABASE_URL"]
    server_url = migrated.replace("/intake?", "/postgres?")
    scratch = f"intake_declared_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {scratch}")
    declared_url = migrated.replace("/intake?", f"/{scratch}?")
    engine = make_engine(declared_url, prepared_statements=True, application_name="intake-tests-declared")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            declared.create_all(connection)
        from_schema, from_migrations = describe(declared_url, declared), describe(migrated, declared)
        assert {row[0] for row in from_migrations["columns"]} == set(declared.tables)
        for kind in CATALOG:
            # The rows only one side has: empty when both databases agree.
            assert from_schema[kind] ^ from_migrations[kind] == set(), kind
    finally:
        engine.dispose()
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {scratch} WITH (FORCE)")


def test_the_declared_schema_is_built_for_any_embedding_width() -> None:
    assert schema.knowledge_chunks.c.embedding.type.dim == schema.DEFAULT_EMBEDDING_DIM
    assert schema.metadata_for(1536).tables["knowledge_chunks"].c.embedding.type.dim == 1536


MIGRATION_OWNER = "e_schema_owner"  # a managed PostgreSQL's shape: the tables' owner is no superuser


@pytest.fixture
def owned_database(stack: dict[str, str]) -> Iterator[str]:
    """An empty database owned by a plain login role, with pgvector created by the server's administrator
    and intake_maintenance grantable by the owner (README: "Running on a managed PostgreSQL")."""
    server_url = stack["INTAKE_ADMIN_DATABASE_URL"].replace("/intake?", "/postgres?")
    scratch = f"intake_owned_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{MIGRATION_OWNER}') THEN
                CREATE ROLE {MIGRATION_OWNER} LOGIN NOSUPERUSER NOBYPASSRLS;
            END IF; END $$""")
        admin.execute(f"GRANT intake_maintenance TO {MIGRATION_OWNER} WITH ADMIN OPTION")
        admin.execute(f"CREATE DATABASE {scratch} OWNER {MIGRATION_OWNER}")
    superuser_url = stack["INTAKE_ADMIN_DATABASE_URL"].replace("/intake?", f"/{scratch}?")
    with psycopg.connect(superuser_url, autocommit=True) as db:
        db.execute("CREATE EXTENSION vector")
    try:
        yield superuser_url.replace("postgresql://postgres@", f"postgresql://{MIGRATION_OWNER}@", 1)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {scratch} WITH (FORCE)")


def test_migrations_carry_existing_rows_forward_and_back_as_a_plain_owner(owned_database: str) -> None:
    """Data steps of migrations run under FORCE row-level security when the owner is no superuser: the
    knowledge search vectors are recomputed (0010), a persona kept in settings moves to ai_personas and back
    (0011), and the operators' audit rows go before tenant_id is NOT NULL again."""
    url = owned_database
    migrate.upgrade(url, "0009")
    tenant = uuid.uuid4()
    embedding = "[" + ",".join(["0.1"] * schema.DEFAULT_EMBEDDING_DIM) + "]"
    with psycopg.connect(url) as db:
        db.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        db.execute("INSERT INTO tenants (id, name, settings) VALUES (%s, 'Owned', "
                   "'{\"ai\": {\"persona\": {\"name\": \"Aino\", \"tone\": \"warm\"}, \"model\": \"m\"}}')", (tenant,))
        document = db.execute(
            "INSERT INTO knowledge_documents (tenant_id, source, title, content_hash, embedding_model, embedding_dim)"
            " VALUES (%s, 'faq', 'FAQ', 'h', 'e', %s) RETURNING id", (tenant, schema.DEFAULT_EMBEDDING_DIM)
        ).fetchone()
        assert document is not None
        db.execute("INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, "
                   "embedding_model) VALUES (%s, %s, 0, 'Money back', 'Refunds take five days', %s, 'e')",
                   (tenant, document[0], embedding))
    migrate.upgrade(url)
    with psycopg.connect(url) as db:
        db.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        stemmed = db.execute("SELECT search_vector @@ to_tsquery('english', 'refund') FROM knowledge_chunks").fetchone()
        persona = db.execute("SELECT name, tone, is_default FROM ai_personas").fetchone()
        settings = db.execute("SELECT settings FROM tenants").fetchone()
        db.execute("INSERT INTO audit_logs (tenant_id, actor, action, subject_type, subject_id) "
                   "VALUES (NULL, 'cli:op', 'key.create', 'key', 'k')")
    assert stemmed == (True,)
    assert persona == ("Aino", "warm", True)
    assert settings is not None and settings[0] == {"ai": {"model": "m"}}
    migrate.downgrade(url, "0010")
    with psycopg.connect(url) as db:
        db.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        restored = db.execute("SELECT settings FROM tenants").fetchone()
    assert restored is not None and restored[0]["ai"] == {"model": "m", "persona": {
        "name": "Aino", "tone": "warm", "system_prompt": ""}}
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
