"""The clock's lifecycle steps: retention every INTAKE_RETENTION_INTERVAL_SECONDS, SLA breaches every round.

The clock calls `Lifecycle` once per round with the time; it returns what it removed and marked, which the
clock adds to its metrics. Each step works tenant by tenant in short transactions (see `retention` and
`sla`), with the clock's maintenance role bound to each tenant in turn.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines.lifecycle import sla
from pipelines.lifecycle.retention import Removed, RetentionPolicy, apply_retention

log = structlog.get_logger("intake.lifecycle")


@dataclass
class Upkeep:
    removed: Removed | None = None  # None: retention did not run this round
    breaches: sla.Breaches = field(default_factory=sla.Breaches)


def mark_breaches(engine: Engine, now: datetime) -> sla.Breaches:
    """Mark the breaches due by `now` in every tenant that has an SLA policy."""
    total = sla.Breaches()
    with engine.begin() as conn:
        tenants = [TenantId(uuid.UUID(str(row[0])))
                   for row in conn.execute(text("SELECT DISTINCT tenant_id FROM sla_policies"))]
    for tenant in tenants:
        while True:
            with engine.begin() as conn:
                bind_tenant(conn, tenant)
                found = sla.mark_breaches(conn, tenant, now)
            total.first_response += found.first_response
            total.resolution += found.resolution
            if found.first_response + found.resolution < 1000:
                break
    if total.first_response or total.resolution:
        log.info("lifecycle.sla_breached", first_response=total.first_response, resolution=total.resolution)
    return total


class Lifecycle:
    def __init__(self, engine: Engine, defaults: RetentionPolicy, *, batch: int, retention_every: timedelta) -> None:
        self._engine = engine
        self._defaults = defaults
        self._batch = batch
        self._every = retention_every
        self._last_retention: datetime | None = None

    def __call__(self, now: datetime) -> Upkeep:
        upkeep = Upkeep(breaches=mark_breaches(self._engine, now))
        if self._last_retention is None or now - self._last_retention >= self._every:
            upkeep.removed = apply_retention(self._engine, self._defaults, now=now, batch=self._batch)
            self._last_retention = now
            if any(v for k, v in upkeep.removed.as_dict().items() if k != "batches"):
                log.info("lifecycle.retention", **upkeep.removed.as_dict())
        return upkeep
