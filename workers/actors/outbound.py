"""The `outbound` queue's actor: one stored reply sent through its channel.

A reply is stored by `pipelines.desk.replies` (status `queued`) and this job is enqueued after that commit,
with ids only. `pipelines.outbound.send` claims the message, calls the provider's send API outside any
transaction with the inbox's credentials and records the answer; a transient failure retries (after the
provider's `Retry-After` when it gave one), a refusal marks the reply failed with its ledger row.
"""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq

from config import get_settings
from db.tenancy import bind_tenant
from pipelines.errors import RetryableError
from pipelines.outbound import ProviderUnavailable
from pipelines.outbound import send as run_send
from workers.broker import current
from workers.middleware.jobs import job_tenant, report
from workers.middleware.ledger import record_in, resolve_in
from workers.queues import OUTBOUND_QUEUE, SEND_ACTOR
from workers.resources import engine, outbound_client, secret_box

broker = current()  # actors bind to the broker installed when they are declared


@dramatiq.actor(queue_name=OUTBOUND_QUEUE, actor_name=SEND_ACTOR)
def send_message(tenant_id: str, message_id: str, retry_failed: bool = False) -> None:
    """Send one queued reply through its inbox's channel: claimed, sent outside any transaction, recorded.

    A refusal marks the reply failed with a ledger row in the same transaction (the job itself succeeds); an
    unavailable provider retries with backoff, after its `Retry-After` when it gave one, and the last attempt's
    failure is a refusal too. `retry_failed` (a replay of that ledger row) sends a failed reply again.
    """
    tenant = job_tenant()
    replay = send_replay(tenant_id, message_id)
    try:
        result = run_send(engine(), get_settings(), secret_box(), tenant, uuid.UUID(message_id), outbound_client(),
                          ledger=lambda conn, exc: record_in(conn, replay, exc, tenant),
                          retry_failed=retry_failed, final_attempt=_last_attempt())
    except ProviderUnavailable as exc:
        delay = None if exc.retry_after is None else int(exc.retry_after * 1000)
        raise RetryLater(str(exc), delay) from exc
    if retry_failed and result.outcome == "sent":
        with engine().begin() as conn:
            bind_tenant(conn, tenant)
            resolve_in(conn, [replay.message_id])
    report(outcome=result.outcome, early_statuses=result.early_applied)


def send_replay(tenant_id: str, message_id: str) -> dramatiq.Message[Any]:
    """The job that sends a failed reply again; its id is the reply's, so the reply has one ledger row."""
    message = send_message.message(tenant_id, message_id, retry_failed=True)
    return message.copy(message_id=str(uuid.uuid5(uuid.UUID(message_id), "send_message")))


class RetryLater(RetryableError, dramatiq.Retry):
    """A retryable failure with the provider's own delay (`Retry-After`): dramatiq's Retries waits `delay` ms
    instead of its backoff; without one, the backoff applies."""

    def __init__(self, message: str, delay: int | None) -> None:
        RetryableError.__init__(self, message)
        self.message, self.delay = message, delay


def _last_attempt() -> bool:
    from dramatiq.middleware import CurrentMessage

    current = CurrentMessage.get_current_message()
    return current is not None and int(current.options.get("retries", 0)) >= get_settings().job_max_retries
