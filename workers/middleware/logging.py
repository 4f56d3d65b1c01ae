"""structlog context for each message: actor, job id, attempt and tenant, bound for the message's duration."""

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
