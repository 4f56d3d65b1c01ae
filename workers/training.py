"""Training a tenant's classifier in the background: one delayed job per burst of changes.

Whatever changes a tenant's examples (an import, a deletion, a person's correction) calls `schedule` after
its commit. The first call of a burst sets a Redis key for the tenant and enqueues `train_tenant_model` on the
`ai` queue with a delay (`INTAKE_AI_TRAIN_DELAY_SECONDS`); later calls find the key and add nothing, so a
thousand corrections in a minute train once. The job clears the key before it reads the examples, so a
change made while it trains schedules one more run. The enqueue writes dramatiq's delay queue as
`RedisBroker.enqueue(delay=...)` does, so the admin process and the commands need no broker.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq
import redis
import structlog

from workers.queues import AI_QUEUE, ENQUEUE_SCRIPT, bodies_key, delayed, queue_key

log = structlog.get_logger("intake.ai.training")

TRAIN_ACTOR = "train_tenant_model"
PENDING_KEY = "intake:ai:train:{tenant}"
PENDING_SLACK_MS = 120_000  # the key outlives the delay, so a job slow to start still coalesces


def pending_key(tenant: uuid.UUID | str) -> str:
    return PENDING_KEY.format(tenant=tenant)


def schedule(client: Any, tenant: uuid.UUID | str, delay_seconds: float) -> bool:
    """Enqueue the tenant's training unless one is already waiting; True when this call enqueued it.

    Never raises for Redis: the examples are committed, and the next change (or `intake ai train`) trains.
    """
    delay_ms = int(delay_seconds * 1000)
    try:
        if not client.set(pending_key(tenant), "1", nx=True, px=delay_ms + PENDING_SLACK_MS):
            return False
        later = delayed(AI_QUEUE)  # dramatiq's delay queue: a worker moves the job to `ai` at its eta
        options = {"redis_message_id": str(uuid.uuid4()), "eta": int(time.time() * 1000) + delay_ms}
        message: dramatiq.Message[Any] = dramatiq.Message(queue_name=later, actor_name=TRAIN_ACTOR,
                                                          args=(str(tenant),), kwargs={}, options=options)
        client.register_script(ENQUEUE_SCRIPT)(keys=[bodies_key(later), queue_key(later)],
                                               args=[message.options["redis_message_id"], message.encode()])
    except redis.RedisError as exc:
        log.error("ai.train.schedule_failed", tenant_id=str(tenant), error=repr(exc))
        return False
    log.info("ai.train.scheduled", tenant_id=str(tenant), delay_ms=delay_ms)
    return True
