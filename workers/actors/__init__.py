"""The fleet's actors. Each is thin: ids in, one transaction around one pipeline call, enqueue after commit,
a summary `report`ed. The middleware confirms the job's tenant before it runs (`job_tenant()`) and logs the
summary with the job's timing after it.

`outbound` (its own module) declares `send_message`, the `outbound` queue's actor, and `training` the `ai`
queue's `train_tenant_model`; importing this package
declares every actor, as a worker process needs."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq

from config import get_settings
from pipelines.assistant import assist_messages as run_assist
from pipelines.ingest import TenantBusy
from pipelines.ingest import ingest_events as run_ingest
from pipelines.webhooks.delivery import deliver
from workers.broker import current
from workers.middleware.jobs import job_tenant, report
from workers.middleware.ledger import settle_batch
from workers.queues import AI_ACTOR, AI_QUEUE, DELIVER_ACTOR, DELIVER_QUEUE, INGEST_ACTOR, INGEST_QUEUE, wake_key
from workers.resources import engine, ingest_policy, secret_box, webhook_policy

broker = current()  # actors bind to the broker installed when they are declared

BUSY_DELAY_MS = 100  # a job whose tenant is busy comes back after 100-200 ms
PASS_SECONDS = 5.0  # a deliver job keeps its endpoint's deliveries in flight this long, then hands over to a new job


@dramatiq.actor(queue_name=INGEST_QUEUE, actor_name=INGEST_ACTOR)
def ingest_events(tenant_id: str, event_ids: list[str], retry_failed: bool = False) -> None:
    """Turn stored inbound events into contacts, conversations and messages.

    Events the batch sets aside are recorded in the failure ledger in the same transaction, and the job
    succeeds: its good events are stored. `retry_failed` (a replay) runs set-aside events again.
    """
    tenant = job_tenant()
    try:
        with engine().begin() as conn:  # the pipeline's first statement binds the tenant (one round trip less)
            result = run_ingest(conn, tenant, [uuid.UUID(i) for i in event_ids], ingest_policy(),
                                batch_max=get_settings().ingest_batch_max, retry_failed=retry_failed)
            settle_batch(conn, result, retry_failed, tenant=tenant)
    except TenantBusy as busy:
        # Not a failure and not a retry: the thread goes to other tenants' jobs, these events come back
        # once the running batch has had time to finish (or to take them).
        if busy.waiting:
            ingest_events.send_with_options(args=(tenant_id, [str(i) for i in busy.waiting]),
                                            kwargs={"retry_failed": True} if retry_failed else None,
                                            delay=BUSY_DELAY_MS + random.randrange(BUSY_DELAY_MS))  # noqa: S311
        report(busy=len(busy.waiting))
        return
    if result.messages_created:
        # After the commit: AI runs on its own queue, so a slow or failing provider never holds up ingestion.
        assist_messages.send(tenant_id, [str(m) for m in result.messages_created])
    report(events=result.events, waiting_taken=result.waiting_taken, messages=len(result.messages_created),
           duplicates=result.duplicates, statuses=result.statuses_applied, failed=len(result.failed))


@dramatiq.actor(queue_name=AI_QUEUE, actor_name=AI_ACTOR)
def assist_messages(tenant_id: str, message_ids: list[str]) -> None:
    """Classify stored inbound messages and draft replies where the inbox asks for them."""
    counts = run_assist(engine(), get_settings(), job_tenant(), [uuid.UUID(m) for m in message_ids],
                        limiter=provider_limit)
    report(messages=len(message_ids), **counts)


@dramatiq.actor(queue_name=DELIVER_QUEUE, actor_name=DELIVER_ACTOR)
def deliver_webhooks(tenant_id: str, endpoint_id: str) -> None:
    """Passes over a webhook endpoint: plan its new events, send what is due. A wake-up only: the work is
    found in PostgreSQL, so a lost or duplicated job loses or repeats nothing."""
    broker.client.delete(wake_key(endpoint_id))
    done = deliver(engine(), secret_box(), job_tenant(), uuid.UUID(endpoint_id), webhook_policy(), seconds=PASS_SECONDS)
    if done.more:  # still busy: the next job goes on (a rate-limited endpoint after a second)
        deliver_webhooks.send_with_options(args=(tenant_id, endpoint_id), delay=1000 if done.rate_limited else None)
    report(planned=done.planned, sent=done.sent, delivered=done.delivered)


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
        _limiter_backend = RedisBackend(client=broker.client)
    limit = get_settings().ai_rate_limit_per_second
    limiter = WindowRateLimiter(_limiter_backend, f"intake:ai:{provider}", limit=limit, window=1)
    while True:
        with limiter.acquire(raise_on_failure=False) as acquired:
            if acquired:
                yield
                return
        time.sleep(0.05 + random.random() * 0.1)  # noqa: S311  (jitter, not a secret)


_limiter_backend: Any = None


from workers.actors import outbound, training  # noqa: E402  (declared after the broker above is installed)

__all__ = ["assist_messages", "ingest_events", "outbound", "provider_limit", "retry_message", "training"]
