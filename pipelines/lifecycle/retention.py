"""Retention: how long each kind of record is kept, per tenant, and the batched removal of what is due.

- Raw event bodies (and request headers) go N days after the event was processed. The row stays, with its
  dedupe key, so a provider's late retry is still recognised as a duplicate; `body_purged_at` says when.
- Failure-ledger rows go M days after they were settled (resolved, discarded or replayed); dead ones stay.
- Audit rows go after K days.
- AI usage rows are added into `ai_usage_monthly` and removed after L days, in the same statement.
- Change feed events (`change_events`) go after C days: a reader or subscriber further behind than that
  resumes at the oldest event kept.

A tenant's `settings.retention` (`event_body_days`, `failure_days`, `audit_days`, `ai_usage_days`,
`change_days`) overrides
the fleet's INTAKE_RETENTION_* defaults; a value that is not a whole number of days in range is ignored.
Audit rows are kept at least 30 days whatever is set: they record what operators did too.

Work is done in small batches, each its own short transaction bound to one tenant (the clock's role sees a
tenant's rows as the fleet does), taking only rows no one holds where others may hold them (SKIP LOCKED):
no long locks, and dead row versions few enough for autovacuum to reclaim as it goes. Usage rows are
rolled up by the statement that deletes them: a row two clocks reach at once is counted by the one that
deleted it. Every function takes `now`, so tests drive
the clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from config import Settings
from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.control.settings import AUDIT_FLOOR_DAYS

# The least each setting may be; a stored value below it (written before the floor) is ignored.
LIMITS = {"event_body_days": 1, "failure_days": 1, "audit_days": AUDIT_FLOOR_DAYS, "ai_usage_days": 32,
          "change_days": 1}
MAX_DAYS = 36_500

PURGE_BODIES = text("""
UPDATE inbound_events SET body = ''::bytea, headers = '{}'::jsonb, body_purged_at = :now
WHERE tenant_id = :t AND id IN (
    SELECT id FROM inbound_events
    WHERE tenant_id = :t AND status = 'processed' AND body_purged_at IS NULL AND processed_at < :cutoff
    ORDER BY processed_at LIMIT :limit FOR UPDATE SKIP LOCKED)
""")
# {who} is "tenant_id = :t", or "tenant_id IS NULL" for the operators' rows that belong to no tenant.
DELETE_FAILURES = """
DELETE FROM job_failures WHERE id IN (
    SELECT id FROM job_failures
    WHERE {who} AND status <> 'dead' AND coalesce(settled_at, replayed_at, last_failed_at) < :cutoff
    LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
DELETE_AUDIT = """
DELETE FROM audit_logs WHERE id IN (
    SELECT id FROM audit_logs WHERE {who} AND created_at < :cutoff LIMIT :limit)
"""
TENANT_ROWS = "tenant_id = :t"
NO_TENANT_ROWS = "tenant_id IS NULL"
ROLL_UP_USAGE = text("""
WITH gone AS (
    DELETE FROM ai_usage WHERE tenant_id = :t AND id IN (
        SELECT id FROM ai_usage WHERE tenant_id = :t AND created_at < :cutoff ORDER BY created_at LIMIT :limit)
    RETURNING tenant_id, created_at, feature, provider, model, tokens_in, tokens_out, cost_usd, latency_ms
), added AS (
    INSERT INTO ai_usage_monthly AS m (tenant_id, month, feature, provider, model, calls, tokens_in, tokens_out,
                                       cost_usd, latency_ms)
    SELECT tenant_id, CAST(date_trunc('month', created_at AT TIME ZONE 'UTC') AS date), feature, provider, model,
           count(*), sum(tokens_in), sum(tokens_out), sum(cost_usd), sum(latency_ms)
    FROM gone GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (tenant_id, month, feature, provider, model) DO UPDATE SET
        calls = m.calls + EXCLUDED.calls, tokens_in = m.tokens_in + EXCLUDED.tokens_in,
        tokens_out = m.tokens_out + EXCLUDED.tokens_out, cost_usd = m.cost_usd + EXCLUDED.cost_usd,
        latency_ms = m.latency_ms + EXCLUDED.latency_ms
    RETURNING 1
)
SELECT count(*) FROM gone
""")


@dataclass(frozen=True)
class RetentionPolicy:
    event_body_days: int
    failure_days: int
    audit_days: int
    ai_usage_days: int
    change_days: int = 30

    @classmethod
    def defaults(cls, settings: Settings) -> RetentionPolicy:
        return cls(settings.retention_event_body_days, settings.retention_failure_days,
                   settings.retention_audit_days, settings.retention_ai_usage_days, settings.retention_change_days)

    def for_tenant(self, tenant_settings: Mapping[str, Any] | None) -> RetentionPolicy:
        """These defaults, overridden by the valid values of a tenant's `settings.retention`."""
        given = (tenant_settings or {}).get("retention")
        if not isinstance(given, Mapping):
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, least in LIMITS.items():
            value = given.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and least <= value <= MAX_DAYS:
                values[name] = value
        return RetentionPolicy(**values)


@dataclass
class Removed:
    """What one retention run removed (event bodies are purged, their rows stay)."""

    event_bodies: int = 0
    failures: int = 0
    audit_rows: int = 0
    ai_usage_rows: int = 0
    change_events: int = 0
    batches: int = 0

    def add(self, other: Removed) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def apply_retention(engine: Engine, defaults: RetentionPolicy, *, now: datetime, batch: int = 1000,
                    tenant: TenantId | None = None) -> Removed:
    """Remove everything due by `now`, tenant by tenant (or only `tenant`), in batches of `batch` rows."""
    removed = Removed()
    for tenant_id, settings in _tenants(engine, tenant):
        removed.add(apply_tenant(engine, tenant_id, defaults.for_tenant(settings), now=now, batch=batch))
    if tenant is None:  # the operators' rows that belong to no tenant follow the fleet's defaults
        removed.failures += _drain(engine, None, text(DELETE_FAILURES.format(who=NO_TENANT_ROWS)),
                                   now - timedelta(days=defaults.failure_days), batch, removed)
        removed.audit_rows += _drain(engine, None, text(DELETE_AUDIT.format(who=NO_TENANT_ROWS)),
                                     now - timedelta(days=defaults.audit_days), batch, removed)
    return removed


def apply_tenant(engine: Engine, tenant: TenantId, policy: RetentionPolicy, *, now: datetime,
                 batch: int = 1000) -> Removed:
    removed = Removed()
    days = timedelta(days=1)
    removed.event_bodies = _drain(engine, tenant, PURGE_BODIES, now - policy.event_body_days * days, batch, removed,
                                  now=now)
    removed.failures = _drain(engine, tenant, text(DELETE_FAILURES.format(who=TENANT_ROWS)),
                              now - policy.failure_days * days, batch, removed)
    removed.audit_rows = _drain(engine, tenant, text(DELETE_AUDIT.format(who=TENANT_ROWS)),
                                now - policy.audit_days * days, batch, removed)
    removed.ai_usage_rows = _drain(engine, tenant, ROLL_UP_USAGE, now - policy.ai_usage_days * days, batch, removed,
                                   counted=True)
    removed.change_events = _drain(engine, tenant, text(changes.RETIRE), now - policy.change_days * days, batch,
                                   removed)
    return removed


def _drain(engine: Engine, tenant: TenantId | None, statement: Any, cutoff: datetime, batch: int, removed: Removed,
           *, now: datetime | None = None, counted: bool = False) -> int:
    """Run `statement` in its own transaction until a batch comes back short; the rows it touched."""
    total = 0
    while True:
        with engine.begin() as conn:
            if tenant is not None:
                bind_tenant(conn, tenant)
            params = {"t": tenant, "cutoff": cutoff, "limit": batch, "now": now}
            result = conn.execute(statement, params)
            done = int(result.scalar_one()) if counted else result.rowcount
        removed.batches += 1
        total += done
        if done < batch:
            return total


def _tenants(engine: Engine, only: TenantId | None) -> list[tuple[TenantId, Any]]:
    with engine.begin() as conn:
        if only is not None:
            bind_tenant(conn, only)
            rows = conn.execute(text("SELECT id, settings FROM tenants WHERE id = :t"), {"t": only}).all()
        else:
            rows = conn.execute(text("SELECT id, settings FROM tenants ORDER BY id")).all()
    return [(TenantId(uuid.UUID(str(row.id))), row.settings) for row in rows]
