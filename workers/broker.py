"""The fleet's one dramatiq broker. Importing this module configures it: import it before any actor.

Queues: `ingest` (provider events), `ai` (classification and drafts) and `maintenance` (sweeps,
replays), so housekeeping and AI never starve ingestion. Each worker process picks its queues.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from config import configure_logging, get_settings
from pipelines.errors import is_retryable
from workers.context import engine
from workers.ledger import FailureLedger
from workers.middleware import LogContext, PollInterval

QUEUES = ("ingest", "ai", "maintenance")

settings = get_settings()
configure_logging(settings.log_format, settings.log_level)


def _redis_url() -> str:
    if settings.redis_url:
        return settings.redis_url
    from workers.runtime import resolve

    return resolve(settings).redis_url


def _retry_when(retries: int, exc: BaseException) -> bool:
    return is_retryable(exc) and retries < settings.job_max_retries


def _middleware() -> list[dramatiq.Middleware]:
    middleware: list[dramatiq.Middleware] = [
        AgeLimit(max_age=settings.job_max_age_ms),
        TimeLimit(time_limit=settings.job_time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        # dramatiq runs after_* hooks in reverse order: listed before Retries, the ledger runs after it
        # and sees each failed message's final fate.
        FailureLedger(engine),
        Retries(
            max_retries=settings.job_max_retries,
            min_backoff=settings.job_min_backoff_ms,
            max_backoff=settings.job_max_backoff_ms,
            retry_when=_retry_when,
        ),
        CurrentMessage(),
        LogContext(),
        PollInterval(settings.worker_poll_ms),
    ]
    if settings.worker_metrics_port and os.environ.get("INTAKE_PROCESS_ROLE") == "worker":
        # `intake worker` exports dramatiq_prom_host/port for the exposition server it forks.
        from dramatiq.middleware.prometheus import Prometheus

        middleware.append(Prometheus())
    return middleware


broker = RedisBroker(
    url=_redis_url(),
    middleware=_middleware(),
    # A SIGKILLed worker's unacknowledged messages come back after this long, not after a minute.
    heartbeat_timeout=settings.heartbeat_timeout_ms,
    # Requeue crashed workers' messages often enough that recovery takes seconds.
    maintenance_chance=100_000,  # 10% of broker commands (dramatiq scales by 1,000,000)
    socket_connect_timeout=2,
    socket_timeout=10,
    health_check_interval=30,
)
for queue in QUEUES:
    broker.declare_queue(queue)
dramatiq.set_broker(broker)


# HSET of the encoded message, then RPUSH of its id: what `RedisBroker.enqueue` writes, in one atomic
# command (a script runs whole) and one round trip.
ENQUEUE_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('RPUSH', KEYS[2], ARGV[1])
"""


async def enqueue_async(client: Any, actor: dramatiq.Actor[Any, Any], *args: Any) -> dramatiq.Message[Any]:
    """Enqueue from an asyncio process without a thread, as `RedisBroker.enqueue` would.

    `client` is a `redis.asyncio` client on the broker's Redis.
    """
    message = actor.message(*args).copy(options={"redis_message_id": str(uuid.uuid4())})
    broker.emit_before("enqueue", message, None)
    queue = f"{broker.namespace}:{message.queue_name}"
    script = client.register_script(ENQUEUE_SCRIPT)  # sent by EVALSHA; by EVAL when Redis lacks it
    await script(keys=[f"{queue}.msgs", queue], args=[message.options["redis_message_id"], message.encode()])
    broker.emit_after("enqueue", message, None)
    return message
