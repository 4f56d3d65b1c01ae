"""The fleet's actors. Each is thin: ids in, one transaction around one pipeline call, enqueue after commit."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from config import get_settings
from db.tenancy import UnknownTenant, resolve_tenant
from pipelines.errors import UnknownTenantError
from pipelines.ingest import TenantBusy
from pipelines.ingest import ingest_events as run_ingest
from workers import broker as _broker
from workers.ai import assist_messages as run_assist
from workers.context import engine, ingest_policy
from workers.ledger import record_in, resolve_in

log = structlog.get_logger("intake.worker")

BUSY_DELAY_MS = 100  # a job whose tenant is busy comes back after 100-200 ms


@dramatiq.actor(queue_name="ingest")
def ingest_events(tenant_id: str, event_ids: list[str], retry_failed: bool = False) -> None:
    """Turn stored inbound events into contacts, conversations and messages.

    Events the batch sets aside are recorded in the failure ledger in the same transaction, and the job
    succeeds: its good events are stored. `retry_failed` (a replay) runs set-aside events again.
    """
    started = time.time()
    ids = [uuid.UUID(i) for i in event_ids]
    policy = ingest_policy()
    try:
        with engine().begin() as conn:
            try:
                tenant = resolve_tenant(conn, tenant_id)
            except UnknownTenant as exc:
                raise UnknownTenantError(str(exc)) from None
            result = run_ingest(conn, tenant, ids, policy, batch_max=get_settings().ingest_batch_max,
                                retry_failed=retry_failed)
            for event_id, error in result.failed.items():
                record_in(conn, retry_message(tenant_id, event_id), error, tenant)
            if retry_failed and result.processed:
                resolve_in(conn, [retry_message(tenant_id, e).message_id for e in result.processed])
    except TenantBusy as busy:
        # Not a failure and not a retry: the thread goes to other tenants' jobs, these events come back
        # once the running batch has had time to finish (or to take them).
        if busy.waiting:
            ingest_events.send_with_options(args=(tenant_id, [str(i) for i in busy.waiting]),
                                            kwargs={"retry_failed": True} if retry_failed else None,
                                            delay=BUSY_DELAY_MS + random.randrange(BUSY_DELAY_MS))  # noqa: S311
        return
    if result.messages_created:
        # After the commit: AI runs on its own queue, so a slow or failing provider never holds up ingestion.
        assist_messages.send(tenant_id, [str(m) for m in result.messages_created])
    log.info("ingest.batch.stored", events=result.events, waiting_taken=result.waiting_taken,
             messages=len(result.messages_created), duplicates=result.duplicates,
             statuses=result.statuses_applied, failed=len(result.failed),
             queued_ms=_queued_ms(started), took_ms=round((time.time() - started) * 1000, 1))


def retry_message(tenant_id: str, event_id: uuid.UUID) -> dramatiq.Message[Any]:
    """The job that runs one set-aside event again; its id is the event's, so its ledger row is one."""
    message = ingest_events.message(tenant_id, [str(event_id)], retry_failed=True)
    return message.copy(message_id=str(uuid.uuid5(event_id, "ingest_events")))


def _queued_ms(started: float) -> float | None:
    """How long the running job waited between its enqueue (or its delay's end) and its start."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return None
    enqueued = float(message.options.get("eta", message.message_timestamp))
    return round(started * 1000 - enqueued, 1)


@dramatiq.actor(queue_name="ai")
def assist_messages(tenant_id: str, message_ids: list[str]) -> None:
    """Classify stored inbound messages and draft replies where the inbox asks for them."""
    settings = get_settings()
    with engine().begin() as conn:
        try:
            tenant = resolve_tenant(conn, tenant_id)
        except UnknownTenant as exc:
            raise UnknownTenantError(str(exc)) from None
    counts = run_assist(engine(), settings, tenant, [uuid.UUID(m) for m in message_ids], limiter=provider_limit)
    log.info("ai.batch.stored", messages=len(message_ids), **counts)


@contextmanager
def provider_limit(provider: str) -> Iterator[None]:
    """A per-provider call rate shared by every worker, kept on Redis (dramatiq's keys are not namespaced).

    A call over the limit waits for the next window instead of failing: waiting for a slot is not an
    error, and must not spend the job's retries.
    """
    from dramatiq.rate_limits import WindowRateLimiter
    from dramatiq.rate_limits.backends import RedisBackend

    global _limiter_backend
    if _limiter_backend is None:
        _limiter_backend = RedisBackend(client=_broker.broker.client)
    limit = get_settings().ai_rate_limit_per_second
    limiter = WindowRateLimiter(_limiter_backend, f"intake:ai:{provider}", limit=limit, window=1)
    while True:
        with limiter.acquire(raise_on_failure=False) as acquired:
            if acquired:
                yield
                return
        time.sleep(0.05 + random.random() * 0.1)  # noqa: S311  (jitter, not a secret)


_limiter_backend: Any = None
