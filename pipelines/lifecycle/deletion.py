"""Tenant deletion: every row of the tenant, in batches, then the tenant itself, and an audit row.

The tenant is disabled first (its inboxes answer 404, so nothing new arrives), then each table is emptied
of the tenant's rows a batch per transaction, tables that reference others before the ones they reference:
no statement holds locks for long or cascades through millions of rows. The tenant's row goes last. The
audit row that records the deletion belongs to no tenant (only the operators read it); it names the
tenant's id and the counts, nothing else. The caller removes the tenant's Redis jobs and keys too
(`pipelines.lifecycle.jobs`).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, delete, func, select, tuple_, update

from db.schema import tenants
from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.lifecycle.tables import owned_by, tenant_tables

BATCH = 5000


def disable(engine: Engine, tenant: TenantId) -> None:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(update(tenants).where(tenants.c.id == tenant)
                     .values(disabled_at=func.coalesce(tenants.c.disabled_at, func.now())))


def delete_rows(engine: Engine, tenant: TenantId, *, batch: int = BATCH,
                on_rows: Callable[[int], None] | None = None) -> dict[str, int]:
    """Delete the tenant's rows of every table, its own row last; rows deleted per table."""
    deleted: dict[str, int] = {}
    for table in reversed(tenant_tables()):
        key = tuple_(*table.primary_key.columns)
        statement = delete(table).where(key.in_(select(*table.primary_key.columns)
                                                .where(owned_by(table, tenant)).limit(batch)))
        name = str(table.name)
        deleted[name] = 0
        while True:
            with engine.begin() as conn:
                bind_tenant(conn, tenant)
                done = conn.execute(statement).rowcount
            deleted[name] += done
            if on_rows is not None:
                on_rows(done)
            if done < batch:
                break
    return deleted


def record_deletion(engine: Engine, tenant: TenantId, deleted: dict[str, int], *,
                    actor: audit.Actor | str) -> None:
    """The audit row, on a connection that may write rows of no tenant (the maintenance role's)."""
    with engine.begin() as conn:
        audit.record(conn, actor=actor, action="tenant.delete", tenant_id=None, subject_type="tenant",
                     subject_id=tenant, after={"deleted": deleted})
