"""dramatiq middleware that every actor gets: structlog context for each message, and a short poll interval."""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy


class LogContext(dramatiq.Middleware):
    """Bind actor, message id, attempt and the job's ids to structlog for the message's duration."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        context: dict[str, Any] = {
            "actor": message.actor_name,
            "job_id": message.message_id,
            "attempt": message.options.get("retries", 0) + 1,
        }
        kwargs = message.kwargs or {}
        args = message.args or ()
        tenant = kwargs.get("tenant_id") or (args[0] if args else None)
        if tenant:
            context["tenant_id"] = str(tenant)
        structlog.contextvars.bind_contextvars(**context)

    def after_process_message(
        self, broker: dramatiq.Broker, message: MessageProxy, *,
        result: Any = None, exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


class PollInterval(dramatiq.Middleware):
    """Cap how long an idle or fully busy consumer sleeps before it asks Redis for more jobs.

    dramatiq backs off exponentially up to the worker timeout (1 s by default), also while every
    prefetched job is still running: a burst then waits up to a second for a consumer that is asleep. A
    lower cap costs a few Redis calls per second per consumer and takes that wait out of the latency.
    """

    def __init__(self, milliseconds: int) -> None:
        self.milliseconds = milliseconds

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        # Consumers are created after this hook and take the worker's timeout as their longest sleep.
        worker.worker_timeout = self.milliseconds
