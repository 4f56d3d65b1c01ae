"""What every job shares, kept out of the actors: its tenant confirmed before it runs, and one log line
after it with the actor's summary, how long the job waited and how long it took."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy
from sqlalchemy import Engine

from db.tenancy import TenantId, UnknownTenant, resolve_tenant
from pipelines.errors import UnknownTenantError

log = structlog.get_logger("intake.worker")
# The confirmed tenant, or why it could not be confirmed (raised when the actor asks).
_tenant: ContextVar[TenantId | Exception | None] = ContextVar("intake_job_tenant", default=None)
_started: ContextVar[float] = ContextVar("intake_job_started", default=0.0)
_summary: ContextVar[dict[str, Any] | None] = ContextVar("intake_job_summary", default=None)


def job_tenant() -> TenantId:
    """The tenant of the running job, confirmed by `TenantScope` before the actor was called.

    Raises `UnknownTenantError` for a job whose tenant does not exist, and the database's own error when the
    tenant could not be looked up (PostgreSQL restarting: retryable, so the job is retried, not dead-lettered):
    here, in the actor, because dramatiq logs and ignores what a middleware raises before a job.
    """
    tenant = _tenant.get()
    if isinstance(tenant, Exception):
        raise tenant
    if tenant is None:
        raise RuntimeError("no tenant: the actor runs without the TenantScope middleware, or takes no tenant_id")
    return tenant


def report(**summary: Any) -> None:
    """What the running job did, for its one log line (an actor's return value would be discarded)."""
    _summary.set(summary)


class TenantScope(dramatiq.Middleware):
    """Confirm a job's tenant (its first argument, `tenant_id`) before the actor runs.

    A tenant id that names no tenant fails the job with `UnknownTenantError` (permanent: to the ledger) when
    the actor asks for its tenant.
    Confirmed ids are remembered for `ttl` seconds per process, so a busy worker asks the database once a
    minute per tenant rather than once per job.
    """

    def __init__(self, engine: Callable[[], Engine], *, ttl: float = 60.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self.confirmed: dict[uuid.UUID, float] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        raw = (message.kwargs or {}).get("tenant_id") or (message.args[0] if message.args else None)
        try:
            _tenant.set(None if raw is None else self.confirm(raw))
        except Exception as exc:  # an unknown tenant, or the database unreachable: the actor raises it
            _tenant.set(exc)

    def confirm(self, raw: object) -> TenantId:
        try:
            tenant = TenantId(uuid.UUID(str(raw)))
        except ValueError:
            raise UnknownTenantError(f"not a tenant id: {str(raw)[:80]!r}") from None
        now = time.monotonic()
        if self.confirmed.get(tenant, 0.0) > now:
            return tenant
        try:
            with self.engine().begin() as conn:
                resolve_tenant(conn, tenant)
        except UnknownTenant as exc:
            raise UnknownTenantError(str(exc)) from None
        if len(self.confirmed) > 100_000:  # tenants come and go: forget them all rather than grow forever
            self.confirmed.clear()
        self.confirmed[tenant] = now + self.ttl
        return tenant

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        _tenant.set(None)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _tenant.set(None)


class JobLog(dramatiq.Middleware):
    """One line per successful job: `<actor>.done` with what the actor `report`ed, `queued_ms` (from its
    enqueue, or its delay's end, to its start) and `took_ms`. Failures are the ledger's and Retries' to log."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _started.set(time.time())
        _summary.set(None)

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if exception is not None:
            return
        started = _started.get()
        enqueued = float(message.options.get("eta", message.message_timestamp))
        summary = _summary.get() or {}
        log.info(f"{message.actor_name}.done", **summary, queued_ms=round(started * 1000 - enqueued, 1),
                 took_ms=round((time.time() - started) * 1000, 1))
