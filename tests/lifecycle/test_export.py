"""Tenant export, re-import, deletion and storage figures: an exported tenant of 100,000 messages re-imported
into a fresh database gives the same counts and checksums, with flat memory; a deleted tenant leaves no row
and no Redis key, and other tenants keep theirs."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, text

from db import migrate
from db.engine import make_engine
from db.tenancy import TenantId, bind_tenant
from pipelines.crypto import SecretBox
from pipelines.lifecycle.export import Manifest, checksum, export_tenant
from pipelines.lifecycle.jobs import forget_jobs
from pipelines.lifecycle.tables import tenant_tables
from tests.factories import seed_tenant
from tests.processes import run_intake
from workers.cli.main import main
from workers.queues import NAMESPACE

MESSAGES = """
INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, direction, external_id, content, metadata,
                      sent_at)
SELECT :t, :inbox, :conversation, :contact, 'inbound', 'bulk-' || :offset + g,
       'Message number ' || (:offset + g) || ': where is my order, asks customer ' || g % 977,
       jsonb_build_object('n', :offset + g), timestamptz '2026-01-01' + (:offset + g) * interval '1 second'
FROM generate_series(1, :n) g
"""


def seeded(app_engine: Engine, name: str) -> TenantId:
    """A tenant with a row in every table; its ledger row settled, so no other test's replay takes it up."""
    with app_engine.begin() as conn:
        tenant = seed_tenant(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), name).tenant_id
        conn.execute(text("UPDATE job_failures SET status = 'discarded' WHERE tenant_id = :t"), {"t": tenant})
        return tenant


def add_messages(admin_engine: Engine, tenant: TenantId, offset: int, n: int) -> None:
    with admin_engine.begin() as conn:
        conversation, inbox, contact = conn.execute(text(
            "SELECT id, inbox_id, contact_id FROM conversations WHERE tenant_id = :t LIMIT 1"), {"t": tenant}).one()
        conn.execute(text(MESSAGES), {"t": tenant, "inbox": inbox, "conversation": conversation, "contact": contact,
                                      "offset": offset, "n": n})


def export_measured(app_engine: Engine, tenant: TenantId, out: Path) -> tuple[Manifest, int, float]:
    """Export as the fleet's role; (manifest, peak traced bytes, seconds)."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with app_engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            bind_tenant(conn, tenant)
            manifest = export_tenant(conn, tenant, out)
        return manifest, tracemalloc.get_traced_memory()[1], time.monotonic() - started
    finally:
        tracemalloc.stop()


@pytest.fixture
def fresh_database(stack: dict[str, str]) -> Iterator[str]:
    admin_url = stack["INTAKE_ADMIN_DATABASE_URL"]
    name = f"intake_import_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url.replace("/intake?", "/postgres?"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = admin_url.replace("/intake?", f"/{name}?")
    migrate.upgrade(url)
    yield url
    with psycopg.connect(admin_url.replace("/intake?", "/postgres?"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def import_archive(url: str, archive: Path, batch: int = 2000) -> None:
    """The test's re-import: each table's lines through json_populate_recordset, references checked later."""
    engine = make_engine(url, prepared_statements=True)
    try:
        with zipfile.ZipFile(archive) as zf, engine.begin() as conn:
            manifest = json.loads(zf.read("manifest.json"))
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for name, entry in manifest["tables"].items():
                with zf.open(entry["file"]) as lines:
                    chunk: list[bytes] = []
                    for line in lines:
                        chunk.append(line.rstrip(b"\n"))
                        if len(chunk) == batch:
                            _insert(conn, name, chunk)
                            chunk = []
                    if chunk:
                        _insert(conn, name, chunk)
    finally:
        engine.dispose()


def _insert(conn: Any, table: str, lines: list[bytes]) -> None:
    columns = ", ".join(f'"{c}"' for c in json.loads(lines[0]))
    conn.execute(text(f'INSERT INTO "{table}" ({columns}) SELECT {columns} '
                      f'FROM json_populate_recordset(NULL::"{table}", CAST(:rows AS json))'),
                 {"rows": (b"[" + b",".join(lines) + b"]").decode()})


def test_an_export_reimports_to_the_same_counts_and_checksums_in_flat_memory(
    app_engine: Engine, admin_engine: Engine, fresh_database: str, tmp_path: Path,
) -> None:
    tenant = seeded(app_engine, "Export tenant")
    add_messages(admin_engine, tenant, 0, 10_000)
    small, small_peak, small_s = export_measured(app_engine, tenant, tmp_path / "small.zip")
    add_messages(admin_engine, tenant, 10_000, 90_000)
    large, large_peak, large_s = export_measured(app_engine, tenant, tmp_path / "large.zip")
    print(f"\nexport: {small.tables['messages']['rows']} messages peak {small_peak / 2**20:.1f} MiB in {small_s:.1f} s; "
          f"{large.tables['messages']['rows']} messages peak {large_peak / 2**20:.1f} MiB in {large_s:.1f} s; "
          f"archive {(tmp_path / 'large.zip').stat().st_size / 2**20:.1f} MiB")
    assert large.tables["messages"]["rows"] == 100_001
    assert large_peak < small_peak * 1.5 + 2**20  # ten times the rows, the same memory

    with zipfile.ZipFile(tmp_path / "large.zip") as zf:
        stored = json.loads(zf.read("manifest.json"))
        assert {"manifest.json", "README.txt"} < set(zf.namelist())
    assert stored["checksum"] == checksum(stored["tables"]) == large.checksum
    assert set(stored["tables"]) == {t.name for t in tenant_tables()}
    # The seed's rows carry every kind of value: vectors, bytea, arrays, JSON, numerics, generated columns.
    assert all(stored["tables"][name]["rows"] >= 1 for name in (
        "knowledge_chunks", "inbound_events", "replay_tokens", "teams", "ai_drafts", "ai_usage", "sla_policies"))

    import_archive(fresh_database, tmp_path / "large.zip")
    imported_engine = make_engine(fresh_database, prepared_statements=True)
    try:
        again, _, _ = export_measured(imported_engine, tenant, tmp_path / "again.zip")
    finally:
        imported_engine.dispose()
    assert again.tables == large.tables and again.checksum == large.checksum


def rows_of(admin_engine: Engine, tenant: TenantId) -> dict[str, int]:
    with admin_engine.connect() as conn:
        return {t.name: conn.execute(text(f'SELECT count(*) FROM "{t.name}" WHERE '
                                          f'{"id" if t.name == "tenants" else "tenant_id"} = :t'),
                                     {"t": tenant}).scalar_one() for t in tenant_tables()}


def intake(*args: str) -> subprocess.CompletedProcess[str]:
    return run_intake(*args)


def test_delete_leaves_nothing_of_the_tenant_and_others_unchanged(
    app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    gone, kept = seeded(app_engine, "Leaving"), seeded(app_engine, "Staying")
    add_messages(admin_engine, gone, 0, 12_000)  # more than one batch
    for tenant in (gone, kept):
        job = str(uuid.uuid4())
        redis_client.hset(f"{NAMESPACE}:ingest.msgs", job, json.dumps({"args": [str(tenant), [str(uuid.uuid4())]]}))
        redis_client.rpush(f"{NAMESPACE}:ingest", job)
    redis_client.set(f"intake:test:{gone}", "1")
    kept_before = rows_of(admin_engine, kept)

    stats = json.loads(intake("tenant", "stats", str(gone), "--json").stdout)
    assert stats["tables"]["messages"]["rows"] == 12_001 and stats["bytes"] > 0
    assert set(stats["retention"]) == {"event_bodies", "failures", "audit_rows", "ai_usage_rows", "change_events"}

    result = intake("tenant", "delete", str(gone), "--confirm", str(gone), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deleted"]["messages"] == 12_001 and data["redis_keys"] == 1
    assert set(rows_of(admin_engine, gone).values()) == {0}
    assert rows_of(admin_engine, kept) == kept_before
    for key in redis_client.scan_iter("*"):
        assert str(gone).encode() not in key
        if redis_client.type(key) == b"hash":
            assert all(str(gone) not in str(v) for v in redis_client.hvals(key))
    with admin_engine.connect() as conn:
        audit = conn.execute(text("SELECT tenant_id, after FROM audit_logs WHERE action = 'tenant.delete' "
                                  "AND subject_id = :t"), {"t": str(gone)}).one()
    assert audit.tenant_id is None and audit.after["deleted"]["messages"] == 12_001
    assert forget_jobs(redis_client, NAMESPACE, str(kept)) == 1  # the other tenant's job was left alone
    again = intake("tenant", "delete", str(gone), "--confirm", str(gone))
    assert again.returncode == 1 and f"no tenant {gone}" in again.stderr


TENANT = str(uuid.uuid4())


@pytest.mark.parametrize(("args", "needle"), [
    (["tenant", "export", "nope", "--out", "x.zip"], "TENANT_ID must be a UUID"),
    (["tenant", "export", TENANT + "\x00", "--out", "x.zip"], "at most 64 characters"),
    (["tenant", "export", TENANT, "--out", "/no/such/dir/x.zip"], "no tenant"),
    (["tenant", "delete", TENANT, "--confirm", str(uuid.uuid4())], "--confirm must repeat"),
    (["tenant", "delete", TENANT, "--confirm", "x" * 100_000], "at most 64 characters"),
    (["tenant", "delete", "1" * 36, "--confirm", "1" * 36], "must be a UUID"),
    (["tenant", "stats", "\u202e" + TENANT], "must be a UUID"),
    (["sla", "set", "--tenant", TENANT, "--priority", "normal", "--first-response", "soon"], "duration"),
    (["sla", "set", "--tenant", TENANT, "--priority", "normal", "--hours", "weekdays 9-5"], "--hours looks like"),
    (["sla", "set", "--tenant", TENANT, "--priority", "normal", "--time-zone", "UTC\x00"], "without NUL"),
])
def test_hostile_lifecycle_input_is_one_clear_line(stack: dict[str, str], args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_an_export_never_overwrites_and_refuses_a_missing_folder(app_engine: Engine, tmp_path: Path) -> None:
    tenant = seeded(app_engine, "Careful export")
    existing = tmp_path / "taken.zip"
    existing.write_bytes(b"keep me")
    for out, needle in ((existing, "exists already"), (tmp_path / "missing" / "x.zip", "is not a directory")):
        result = CliRunner().invoke(main, ["tenant", "export", str(tenant), "--out", str(out)])
        assert result.exit_code == 1 and needle in result.stderr, result.output
    assert existing.read_bytes() == b"keep me"
    done = CliRunner().invoke(main, ["tenant", "export", str(tenant), "--out", str(tmp_path / "ok.zip"), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["tables"]["messages"]["rows"] == 1
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        exported = conn.execute(text("SELECT after FROM audit_logs WHERE action = 'tenant.export'")).scalar_one()
    assert exported["path"] == str(tmp_path / "ok.zip")
    unwritable = CliRunner().invoke(main, ["tenant", "export", str(tenant), "--out", "/proc/intake-export.zip"])
    assert unwritable.exit_code == 1 and "cannot write /proc/intake-export.zip" in unwritable.stderr


def test_an_sla_policy_set_at_the_command_line_is_audited(app_engine: Engine) -> None:
    tenant = seeded(app_engine, "Audited SLA")
    args = ["sla", "set", "--tenant", str(tenant), "--priority", "high", "--first-response", "1h"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, [*args[:-1], "2h"]).exit_code == 0
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        rows = conn.execute(text("SELECT before, after FROM audit_logs WHERE action = 'sla.set' "
                                 "ORDER BY created_at")).all()
    assert [r.after["first_response_minutes"] for r in rows] == [60, 120]
    assert rows[0].before is None and rows[1].before["first_response_minutes"] == 60
