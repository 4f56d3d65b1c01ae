"""The fleet's actors. Each is thin: ids in, one transaction around one pipeline call, enqueue after commit."""

from __future__ import annotations

import uuid

import dramatiq
import structlog

from workers import broker as _broker  # noqa: F401  (configures the broker before the actors bind to it)
from db.tenancy import UnknownTenant, resolve_tenant
from pipelines.ingest import ingest_events as run_ingest
from workers.context import engine, ingest_policy
from workers.errors import CorruptEvent, UnknownTenantError

log = structlog.get_logger("intake.worker")


@dramatiq.actor(queue_name="ingest")
def ingest_events(tenant_id: str, event_ids: list[str]) -> None:
    """Turn stored inbound events into contacts, conversations and messages."""
    ids = [uuid.UUID(i) for i in event_ids]
    policy = ingest_policy()
    with engine().begin() as conn:
        try:
            tenant = resolve_tenant(conn, tenant_id)
        except UnknownTenant as exc:
            raise UnknownTenantError(str(exc)) from None
        result = run_ingest(conn, tenant, ids, policy)
    log.info("ingest.batch.stored", events=result.events, messages=len(result.messages_created),
             duplicates=result.duplicates, statuses=result.statuses_applied, failed=len(result.failed))
    if result.failed:
        # The rest of the batch is committed; the corrupt events go to the dead-letter ledger.
        raise CorruptEvent("; ".join(f"event {k}: {v}" for k, v in result.failed.items()))
