"""The fleet's dramatiq broker, built from a Settings value by `build_broker`; importing this module does nothing else.

Its middleware is the fleet's policy for every job: an age limit, a time limit, retries of what is
retryable (`pipelines.errors.is_retryable`), the failure ledger, structlog context and a short poll interval.
"""

from __future__ import annotations

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

from config import Settings, configure_logging, get_settings
from pipelines.errors import is_retryable
from workers import redis_clients
from workers.middleware.dispatch import WebhookDispatch
from workers.middleware.heap import FreezeBootHeap
from workers.middleware.jobs import JobLog, TenantScope
from workers.middleware.ledger import FailureLedger
from workers.middleware.logging import LogContext
from workers.middleware.polling import PollInterval
from workers.queues import NAMESPACE, QUEUES
from workers.resources import engine
from workers.startup import ServicesUnavailable


def build_broker(settings: Settings, *, metrics: bool = False) -> RedisBroker:
    """The fleet's broker for these settings; `settings.redis_url` or REDIS_SENTINELS must be set (a Runtime
    resolves the embedded Redis's URL).

    `metrics` adds dramatiq's Prometheus exposition (only `intake worker` wants it: it forks its server).
    """
    if not settings.redis_configured:
        raise ServicesUnavailable("REDIS_URL is unset: start workers with `intake worker` (it finds the embedded "
                                  "Redis) or set REDIS_URL")

    def retry_when(retries: int, exc: BaseException) -> bool:
        return is_retryable(exc) and retries < settings.job_max_retries

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
            retry_when=retry_when,
        ),
        CurrentMessage(),
        LogContext(),
        # After LogContext in the list, so its hooks run inside the job's log context.
        TenantScope(engine),
        JobLog(),
        PollInterval(settings.worker_poll_ms),
    ]
    if metrics:
        from dramatiq.middleware.prometheus import Prometheus

        middleware.append(Prometheus())
    client = redis_clients.client(settings, settings.redis_url, socket_connect_timeout=2, socket_timeout=10,
                                  health_check_interval=30)
    broker = RedisBroker(
        client=client,
        namespace=NAMESPACE,
        middleware=middleware,
        # A SIGKILLed worker's unacknowledged messages come back after this long, not after a minute.
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        # Requeue crashed workers' messages often enough that recovery takes seconds.
        maintenance_chance=100_000,  # 10% of broker commands (dramatiq scales by 1,000,000)
    )
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def install(settings: Settings, *, metrics: bool = False) -> RedisBroker:
    """Build the broker and make it dramatiq's global one, which actors bind to when they are declared."""
    broker = build_broker(settings, metrics=metrics)
    dramatiq.set_broker(broker)
    return broker


def ensure(settings: Settings) -> RedisBroker:
    """The broker installed in this process, or one built from `settings` and installed."""
    broker = dramatiq.get_broker() if _installed() else install(settings)
    assert isinstance(broker, RedisBroker)
    return broker


def current() -> RedisBroker:
    """The broker installed in this process, or one built from its environment's settings (a process that
    dramatiq started, or a script that imports the actors)."""
    return ensure(get_settings())


def _installed() -> bool:
    from dramatiq import broker as module

    return isinstance(module.global_broker, RedisBroker)


def for_workers() -> None:
    """dramatiq's command line calls this (`dramatiq workers.broker:for_workers workers.actors`) in each worker
    process before it imports the actors: logging as configured, and the broker with its metrics. A worker
    process, which lives for its jobs alone, also freezes its booted heap (`FreezeBootHeap`); one that consumes
    `deliver` runs the webhook dispatcher (`WebhookDispatch`)."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    broker = install(settings, metrics=bool(settings.worker_metrics_port))
    broker.add_middleware(FreezeBootHeap())
    # A process that consumes `deliver` wakes it on each change (workers.middleware.dispatch).
    broker.add_middleware(WebhookDispatch(engine, settings.webhook_sweep_seconds, settings.listen_database_url))
