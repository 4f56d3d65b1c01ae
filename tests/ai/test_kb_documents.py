"""Knowledge documents listed and deleted, at the command line and over the admin API, with their chunks, audited,
and out of reach of another tenant's key."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import knowledge
from pipelines.ai.local import LocalProvider
from tests.admin_server import client, make_key, make_tenant
from tests.processes import intake_ok as ok
from tests.processes import run_intake as intake

ARTICLE = "# Refunds\n\nRefunds reach your card within five working days.\n\n## Partial refunds\n\nAsk us."






def with_documents(app_engine: Engine, tenant: uuid.UUID, *sources: str) -> None:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        for source in sources:
            knowledge.import_document(conn, TenantId(tenant), source, ARTICLE, "md", LocalProvider(), 384)


def chunks(app_engine: Engine, tenant: uuid.UUID) -> int:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        return int(conn.execute(text("SELECT count(*) FROM knowledge_chunks")).scalar_one())


def test_documents_at_the_command_line(app_engine: Engine, admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine, "KB CLI")
    with_documents(app_engine, tenant, "refunds.md", "shipping.md")
    listed = ok("kb", "list", "--tenant", str(tenant))
    assert [d["source"] for d in listed["items"]] == ["refunds.md", "shipping.md"]
    assert listed["items"][0]["chunk_count"] == 2 and chunks(app_engine, tenant) == 4
    gone = ok("kb", "delete", listed["items"][0]["id"], "--tenant", str(tenant))
    assert (gone["source"], gone["chunks"]) == ("refunds.md", 2) and chunks(app_engine, tenant) == 2
    assert [d["source"] for d in ok("kb", "list", "--tenant", str(tenant))["items"]] == ["shipping.md"]
    again = intake("kb", "delete", listed["items"][0]["id"], "--tenant", str(tenant))
    assert again.returncode == 1 and "no knowledge document" in again.stderr and "Traceback" not in again.stderr
    bad = intake("kb", "delete", "not-an-id", "--tenant", str(tenant))
    assert bad.returncode == 1 and "must be a UUID" in bad.stderr
    lines = intake("kb", "delete", "x\ny", "--tenant", str(tenant))
    assert lines.returncode == 1 and "on one line" in lines.stderr
    with admin_engine.begin() as conn:
        actions = [r[0] for r in conn.execute(text(
            "SELECT action FROM audit_logs WHERE tenant_id = :t AND action LIKE 'kb.%'"), {"t": tenant})]
    assert actions == ["kb.document.delete"]


def test_documents_over_the_api(base: str, app_engine: Engine, admin_engine: Engine) -> None:
    tenant, other = make_tenant(admin_engine, "KB API"), make_tenant(admin_engine, "KB other")
    with_documents(app_engine, tenant, "a.md")
    with_documents(app_engine, other, "theirs.md")
    with client(base, make_key(admin_engine, tenant_id=tenant, name="kb")) as http:
        path = f"/v1/admin/tenants/{tenant}/kb/documents"
        listed = http.get(path, params={"limit": 1}).json()
        assert [d["source"] for d in listed["items"]] == ["a.md"] and listed["next_offset"] is None
        assert http.get(path, params={"limit": 0}).status_code == 422
        assert http.get(f"/v1/admin/tenants/{other}/kb/documents").status_code == 404  # another tenant: as an id of nothing
        theirs = ok("kb", "list", "--tenant", str(other))["items"][0]["id"]
        assert http.delete(f"{path}/{theirs}").status_code == 404  # their document is not in this tenant
        assert http.delete(f"{path}/not-a-uuid").status_code == 404
        assert http.delete(f"{path}/{listed['items'][0]['id']}").json()["source"] == "a.md"
        assert http.get(path).json()["items"] == []
    assert chunks(app_engine, tenant) == 0 and chunks(app_engine, other) == 2
