"""Storage figures of one tenant: rows, bytes, oldest and newest data per table, and what retention removes next.

Bytes are the stored size of the tenant's rows (`pg_column_size` of each row, compressed values as
stored), not their share of indexes or free space. Read as the fleet's role, bound to the tenant.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, null, select, text

from db.tenancy import TenantId
from pipelines.lifecycle.retention import RetentionPolicy
from pipelines.lifecycle.tables import owned_by, tenant_tables, time_column

# For each kind of record: what is due, and when the next one falls due (`:cutoff` = now - its days).
DUE = {
    "event_bodies": ("event_body_days", """
        SELECT count(*) FILTER (WHERE processed_at < :cutoff), min(processed_at) FROM inbound_events
        WHERE tenant_id = :t AND status = 'processed' AND body_purged_at IS NULL"""),
    "failures": ("failure_days", """
        SELECT count(*) FILTER (WHERE coalesce(settled_at, replayed_at, last_failed_at) < :cutoff),
               min(coalesce(settled_at, replayed_at, last_failed_at))
        FROM job_failures WHERE tenant_id = :t AND status <> 'dead'"""),
    "audit_rows": ("audit_days", """
        SELECT count(*) FILTER (WHERE created_at < :cutoff), min(created_at) FROM audit_logs WHERE tenant_id = :t"""),
    "ai_usage_rows": ("ai_usage_days", """
        SELECT count(*) FILTER (WHERE created_at < :cutoff), min(created_at) FROM ai_usage WHERE tenant_id = :t"""),
    "change_events": ("change_days", """
        SELECT count(*) FILTER (WHERE created_at < :cutoff), min(created_at) FROM change_events
        WHERE tenant_id = :t"""),
}


def tenant_stats(conn: Connection, tenant: TenantId, policy: RetentionPolicy, now: datetime) -> dict[str, Any]:
    tables = {}
    for table in tenant_tables():
        when = time_column(table)
        row = table.table_valued()  # the whole row, for its size: pg_column_size(x.*)
        span = (func.min(when), func.max(when)) if when is not None else (null(), null())
        rows, size, oldest, newest = conn.execute(
            select(func.count(), func.coalesce(func.sum(func.pg_column_size(row)), 0), *span)
            .select_from(table).where(owned_by(table, tenant))).one()
        tables[str(table.name)] = {"rows": int(rows), "bytes": int(size), "oldest": oldest, "newest": newest}
    return {
        "tenant_id": str(tenant),
        "tables": tables,
        "rows": sum(t["rows"] for t in tables.values()),
        "bytes": sum(t["bytes"] for t in tables.values()),
        "retention": retention_outlook(conn, tenant, policy, now),
    }


def retention_outlook(conn: Connection, tenant: TenantId, policy: RetentionPolicy, now: datetime) -> dict[str, Any]:
    """Per kind: days kept, how many are due now, and when the next one still kept falls due."""
    outlook = {}
    for kind, (days_field, statement) in DUE.items():
        days = timedelta(days=getattr(policy, days_field))
        due, oldest = conn.execute(text(statement), {"t": tenant, "cutoff": now - days}).one()
        outlook[kind] = {"days": days.days, "due_now": int(due),
                         "next_due_at": None if oldest is None else max(oldest + days, now)}
    return outlook
