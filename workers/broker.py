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
from workers.context import engine
from workers.errors import is_permanent
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
    return not is_permanent(exc) and retries < settings.job_max_retries


def _middleware() -> list[dramatiq.Middleware]:
    middleware: list[dramatiq.Middleware] = [
        AgeLimit(),
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


async def enqueue_async(client: Any, actor: dramatiq.Actor[Any, Any], *args: Any) -> dramatiq.Message[Any]:
    """Enqueue from an asyncio process without a thread: what `RedisBroker.enqueue` writes, atomically.

    dramatiq's enqueue is one HSET of the encoded message under a fresh Redis message id, then an RPUSH of
    that id onto the queue; `client` is a `redis.asyncio` client on the same Redis.
    """
    message = actor.message(*args).copy(options={"redis_message_id": str(uuid.uuid4())})
    broker.emit_before("enqueue", message, None)
    queue = f"{broker.namespace}:{message.queue_name}"
    redis_id = message.options["redis_message_id"]
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(f"{queue}.msgs", redis_id, message.encode())
        pipe.rpush(queue, redis_id)
        await pipe.execute()
    broker.emit_after("enqueue", message, None)
    return message
