"""The failure ledger: every terminal job failure, kept durably in `job_failures`.

dramatiq's own dead letters (`<queue>.XQ`) expire after 7 days, hold the last *enqueued* copy of a message
rather than the final error, and vanish when a queue is flushed. This middleware runs after `Retries` has
decided a message's fate and records the final attempt: the original message (enough to enqueue it again),
the exception and its traceback, the tenant and the ids the job was about.
"""

from __future__ import annotations

import re
import traceback
import uuid
from typing import Any

import dramatiq
import orjson
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

log = structlog.get_logger("intake.ledger")

# Options that belong to one delivery attempt, not to the job: dropped so a replay starts fresh.
ATTEMPT_OPTIONS = ("retries", "traceback", "eta", "redis_message_id", "requeue_timestamp")
_SECRETS = [
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_***"),
    (re.compile(r"(?i)(password|secret|token|api[_-]?key)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1\2***"),
]

RECORD = text("""
INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, ref_id, exception_type,
                          exception_message, traceback, attempts)
VALUES (:tenant, :queue, :actor, :message_id, CAST(:message AS jsonb), :ref, :etype, :emessage, :tb, :attempts)
ON CONFLICT (message_id) DO UPDATE SET
    message = EXCLUDED.message, exception_type = EXCLUDED.exception_type,
    exception_message = EXCLUDED.exception_message, traceback = EXCLUDED.traceback,
    attempts = job_failures.attempts + EXCLUDED.attempts, last_failed_at = now(), status = 'dead'
""")
# Row-level security lets the fleet insert a row without a tenant but never see it again, and ON CONFLICT
# needs to see the conflicting row: a plain INSERT, whose unique violation means "already recorded".
RECORD_UNTENANTED = text(str(RECORD).split("ON CONFLICT")[0])


def scrub(value: str) -> str:
    """Remove anything that looks like a credential from text bound for the ledger."""
    for pattern, replacement in _SECRETS:
        value = pattern.sub(replacement, value)
    return value


def job_tenant(message: MessageProxy) -> uuid.UUID | None:
    """By convention an actor's first argument (or `tenant_id` keyword) names the tenant."""
    raw = (message.kwargs or {}).get("tenant_id") or (message.args[0] if message.args else None)
    try:
        return uuid.UUID(str(raw)) if raw else None
    except ValueError:
        return None


def job_refs(message: MessageProxy) -> str | None:
    ids = [str(a) for a in message.args[1:]] + [f"{k}={v}" for k, v in (message.kwargs or {}).items()
                                                if k != "tenant_id"]
    return scrub(", ".join(ids))[:2000] or None


def replayable(message: MessageProxy) -> dict[str, Any]:
    data: dict[str, Any] = message.asdict()
    data["queue_name"] = q_name(data["queue_name"])
    data["options"] = {k: v for k, v in data["options"].items() if k not in ATTEMPT_OPTIONS}
    data["redis_message_id"] = message.options.get("redis_message_id")
    return data


class FailureLedger(dramatiq.Middleware):
    def __init__(self, engine_factory: Any) -> None:
        self._engine = engine_factory

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if exception is not None and message.failed:
            self.record(message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.failed:
            # AgeLimit skips a message too old to run: that is terminal as well.
            self.record(message, TimeoutError("message exceeded its age limit before it ran"))

    def record(self, message: MessageProxy, exception: BaseException) -> None:
        tenant = job_tenant(message)
        params = {
            "tenant": tenant, "queue": q_name(message.queue_name), "actor": message.actor_name,
            "message_id": message.message_id, "message": orjson.dumps(replayable(message), default=str).decode(),
            "ref": job_refs(message), "etype": type(exception).__name__,
            "emessage": scrub(str(exception))[:4000],
            "tb": scrub("".join(traceback.format_exception(exception)))[-20_000:],
            "attempts": int(message.options.get("retries", 0)) or 1,
        }
        try:
            with self._engine().begin() as conn:
                if tenant is not None:
                    conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(tenant)})
                    exists = conn.execute(text("SELECT 1 FROM tenants WHERE id = :t"), {"t": tenant}).first()
                    if exists is None:
                        params["tenant"] = None
                if params["tenant"] is not None:
                    conn.execute(RECORD, params)
                else:
                    with conn.begin_nested() as savepoint:
                        try:
                            conn.execute(RECORD_UNTENANTED, params)
                        except IntegrityError:
                            savepoint.rollback()
        except Exception as exc:  # the ledger must never take a worker down; dramatiq's XQ still has it
            log.error("ledger.record.failed", job_id=message.message_id, error=repr(exc))
        else:
            log.warning("job.dead", job_id=message.message_id, actor=message.actor_name,
                        error_type=params["etype"], error=params["emessage"])
