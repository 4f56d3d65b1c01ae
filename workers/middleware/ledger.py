"""The failure ledger: every terminal job failure, kept durably in `job_failures`.

dramatiq's own dead letters (`<queue>.XQ`) expire after 7 days, hold the last *enqueued* copy of a message
rather than the final error, and vanish when a queue is flushed. This middleware runs after `Retries` has
decided a message's fate and records the final attempt: the original message (enough to enqueue it again),
the exception and its traceback, the tenant and the ids the job was about.

A job that succeeds but sets one item aside (an ingest event the database refuses) records that item with
`record_in`, in the job's own transaction, under a message that retries only that item; the same columns and the
same upsert as the middleware's rows, so `intake dlq` lists and replays both alike.
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
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from pipelines.errors import escaped, is_retryable

log = structlog.get_logger("intake.ledger")

# Options that belong to one delivery attempt, not to the job: dropped so a replay starts fresh.
ATTEMPT_OPTIONS = ("retries", "traceback", "eta", "redis_message_id", "requeue_timestamp")
# What the scrubber hides. A traceback can quote a whole delivery, so each pattern runs in time linear in
# the text: every match attempt either succeeds and consumes what it read, or fails within a run that no
# other attempt reads again. The password of a URL ("scheme://user:password@host") is the exception,
# as a scan for its "@" could run to the end of the text from every "://": it is looked for only inside
# a word (no white space) up to the word's last "@", where that scan always ends at an "@".
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
_WORD = re.compile(r"\S+")
_SECRETS = [
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
RESOLVE = text("UPDATE job_failures SET status = 'resolved' WHERE message_id = ANY(:ids) AND status = 'dead'")
# Row-level security lets the fleet insert a row without a tenant but never see it again, and ON CONFLICT
# needs to see the conflicting row: a plain INSERT, whose unique violation means "already recorded".
RECORD_UNTENANTED = text(str(RECORD).split("ON CONFLICT")[0])


def scrub(value: str) -> str:
    """Remove anything that looks like a credential from text bound for the ledger (linear in `value`)."""
    if "://" in value:
        value = _WORD.sub(_scrub_userinfo, value)
    for pattern, replacement in _SECRETS:
        value = pattern.sub(replacement, value)
    return value


def _scrub_userinfo(word: re.Match[str]) -> str:
    text = word.group()
    end = text.rfind("@") + 1
    if not end or "://" not in text:
        return text
    return _USERINFO.sub(r"\1***@", text[:end]) + text[end:]


def job_tenant(message: MessageProxy) -> uuid.UUID | None:
    """By convention an actor's first argument (or `tenant_id` keyword) names the tenant."""
    raw = (message.kwargs or {}).get("tenant_id") or (message.args[0] if message.args else None)
    try:
        return uuid.UUID(str(raw)) if raw else None
    except ValueError:
        return None


Job = dramatiq.Message[Any] | MessageProxy


def job_refs(message: Job) -> str | None:
    ids = [str(a) for a in message.args[1:]] + [f"{k}={v}" for k, v in (message.kwargs or {}).items()
                                                if k != "tenant_id"]
    return scrub(", ".join(ids))[:2000] or None


def replayable(message: Job) -> dict[str, Any]:
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
        params = failure_row(message, exception, tenant, int(message.options.get("retries", 0)) or 1)
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


def failure_row(message: Job, exception: BaseException, tenant: uuid.UUID | None, attempts: int) -> dict[str, Any]:
    """The ledger's columns for a failed message: credentials scrubbed, text storable by PostgreSQL."""
    return {
        "tenant": tenant, "queue": q_name(message.queue_name), "actor": message.actor_name,
        "message_id": message.message_id, "message": orjson.dumps(replayable(message), default=str).decode(),
        "ref": job_refs(message), "etype": type(exception).__name__,
        "emessage": escaped(scrub(str(exception)))[:4000],
        "tb": escaped(scrub("".join(traceback.format_exception(exception))))[-20_000:],
        "attempts": attempts,
    }


def record_in(conn: Connection, message: dramatiq.Message[Any], exception: BaseException,
              tenant: uuid.UUID) -> None:
    """Record one failure inside the caller's transaction, with the tenant bound.

    A job that sets one item aside and still succeeds records it here, in the transaction that marks the
    item, with a `message` that retries just that item. The message id is the row's key: the same item
    failing again updates its row (attempts + 1, dead again), as a replay that fails again does. Like the
    middleware, the ledger never fails the job for its own sake: a row it cannot write is logged, and the
    item stays marked; only a retryable error propagates (the whole job then retries).
    """
    try:
        with conn.begin_nested():
            conn.execute(RECORD, failure_row(message, exception, tenant, 1))
    except DBAPIError as exc:
        if is_retryable(exc):
            raise
        log.error("ledger.record.failed", job_id=message.message_id, error=repr(exc))
    else:
        log.warning("job.dead", job_id=message.message_id, actor=message.actor_name,
                    error_type=type(exception).__name__)


def resolve_in(conn: Connection, message_ids: list[str]) -> None:
    """Dead failures whose message has now run successfully (retried by other means than a replay)."""
    conn.execute(RESOLVE, {"ids": message_ids})
