"""The endpoints of operations: the failure ledger, stored events, jobs and the audit trail.

They reuse the operator tools in `workers.ops` (the ones behind `intake dlq` and `intake events`). A tenant
key runs them on the fleet's role with its tenant bound, so row-level security limits them to that tenant;
an operator key runs them as the schema owner across tenants.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select

from db.schema import inbound_events, job_failures
from pipelines import audit
from pipelines.control.common import paged
from pipelines.control.errors import Invalid, NotFound
from pipelines.control.fields import Model, Short
from pipelines.control.models import AuditEntry, Listing, Page
from workers.admin.background import Job, JobStatus, JobView
from workers.admin.http import Call, Endpoint
from workers.broker import ensure
from workers.ops import events as event_ops
from workers.ops import failures as ledger
from workers.queues import INGEST_ACTOR, INGEST_QUEUE, enqueue

PREFIX = "/v1/admin"
MAX_IDS = 1000


# -- the failure ledger ----------------------------------------------------------------------------------
class FailureQuery(Page):
    status: Literal["dead", "replayed", "discarded", "resolved"] | None = None
    queue: Short | None = None
    actor: Short | None = None
    tenant_id: uuid.UUID | None = None
    error: Short | None = Field(default=None, description="Exception type or message contains this text")
    since: datetime | None = None
    until: datetime | None = None


class FailureView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    queue: str
    actor: str
    message_id: str
    ref_id: str | None
    exception_type: str
    exception_message: str
    attempts: int
    status: str
    first_failed_at: datetime
    last_failed_at: datetime
    replayed_at: datetime | None


class FailureDetail(FailureView):
    message: dict[str, Any]
    traceback: str


class FailureAction(Model):
    """Which dead failures to act on: ids, filters, or `all`; `dry_run` only counts them."""

    ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_IDS)
    all: bool = False
    queue: Short | None = None
    actor: Short | None = None
    tenant_id: uuid.UUID | None = None
    error: Short | None = None
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False
    rate: float | None = Field(default=None, strict=True, ge=0.1, le=100_000,
                               description="Replay at most this many a second")

    def has_filter(self) -> bool:
        return any(v is not None for v in (self.queue, self.actor, self.tenant_id, self.error, self.since,
                                           self.until))


def _failure_filters(call: Call, source: Any, *, status: str | None) -> ledger.Filters:
    return ledger.Filters(ids=tuple(getattr(source, "ids", ()) or ()), queue=source.queue, actor=source.actor,
                          tenant=call.scope_tenant(source.tenant_id), error=source.error, since=source.since,
                          until=source.until, status=status)


def list_failures(call: Call) -> Listing[FailureView]:
    filters = _failure_filters(call, call.query, status=call.query.status)
    columns = [job_failures.c[name] for name in FailureView.model_fields]
    query = (select(*columns).where(filters.where())
             .order_by(job_failures.c.last_failed_at.desc(), job_failures.c.id))
    with call.transaction() as conn:
        return paged(conn, query, Page(limit=call.query.limit, offset=call.query.offset), FailureView.model_validate)


def show_failure(call: Call) -> FailureDetail:
    with call.transaction() as conn:
        row = ledger.show(conn, call.ids["failure_id"])
    if row is None:
        raise NotFound(f"no failure {call.ids['failure_id']}")
    return FailureDetail.model_validate(row)


def _action(call: Call) -> tuple[FailureAction, ledger.Filters]:
    body: FailureAction = call.body
    if not (body.ids or body.all or body.has_filter()):
        raise Invalid({"ids": "name failure ids, give a filter, or set all"})
    return body, _failure_filters(call, body, status="dead")


def _count(call: Call, filters: ledger.Filters) -> int:
    with call.transaction() as conn:
        return ledger.count(conn, filters)


def _started(call: Call, kind: str, job: Job, body: BaseModel) -> JobView:
    """Record the start of a job that changes something; a dry run changes nothing and is not recorded."""
    if not job.dry_run:
        with call.transaction() as conn:
            audit.record(conn, actor=call.actor, action=kind, tenant_id=call.principal.tenant_id,
                         subject_type="job", subject_id=job.id, after={
                             "request": body.model_dump(mode="json", exclude={"dry_run"}), "total": job.total})
    return job.view()


def replay_failures(call: Call) -> JobView:
    body, filters = _action(call)
    total = _count(call, filters)
    bound, settings = call.bound, call.admin.settings

    def work(job: Job) -> None:
        # Only `begin` is called on the engine: a TenantBound keeps a tenant key's replay in its tenant.
        # Paced replays commit a second's worth at a time and pause between batches with no transaction
        # open; a cancel ends the pause at once.
        for _ in ledger.replay(bound, ensure(settings), filters, batch=100, rate=body.rate, wait=job.cancel.wait):
            job.advance()
            if job.cancelled:
                break

    job = call.admin.jobs.start("failures.replay", call.principal, total, None if body.dry_run else work)
    return _started(call, "failures.replay", job, body)


def discard_failures(call: Call) -> JobView:
    body, filters = _action(call)
    total = _count(call, filters)
    bound = call.bound

    def work(job: Job) -> None:
        with bound.begin() as conn:
            job.advance(ledger.discard(conn, filters))

    job = call.admin.jobs.start("failures.discard", call.principal, total, None if body.dry_run else work)
    return _started(call, "failures.discard", job, body)


# -- stored events -----------------------------------------------------------------------------------------
class EventQuery(Page):
    status: Literal["received", "queued", "processed", "failed"] | None = None
    tenant_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


class EventView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    inbox_id: uuid.UUID
    channel: str
    dedupe_key: str
    status: str
    attempts: int
    error: str | None
    received_at: datetime
    processed_at: datetime | None


class Reprocess(Model):
    """Which stored events to run through the pipeline again (at least one filter); `dry_run` counts."""

    ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_IDS)
    status: Literal["received", "queued", "processed", "failed"] | None = None
    tenant_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False


def list_events(call: Call) -> Listing[EventView]:
    q = call.query
    filters = event_ops.Filters(status=q.status, tenant=call.scope_tenant(q.tenant_id), since=q.since, until=q.until)
    columns = [inbound_events.c[name] for name in EventView.model_fields]
    query = select(*columns).where(filters.where()).order_by(inbound_events.c.received_at.desc(),
                                                             inbound_events.c.id)
    with call.transaction() as conn:
        return paged(conn, query, Page(limit=q.limit, offset=q.offset), EventView.model_validate)


def reprocess_events(call: Call) -> JobView:
    body: Reprocess = call.body
    filters = event_ops.Filters(ids=tuple(body.ids), status=body.status, tenant=call.scope_tenant(body.tenant_id),
                                since=body.since, until=body.until)
    if not (body.ids or body.status or body.tenant_id or body.since or body.until):
        raise Invalid({"ids": "name event ids or give at least one of status, tenant_id, since, until"})
    with call.transaction() as conn:
        total = event_ops.count(conn, filters)
    bound, settings = call.bound, call.admin.settings

    def work(job: Job) -> None:
        client = ensure(settings).client

        def send(tenant: uuid.UUID, event_ids: list[str]) -> None:  # by name, as the web sends ingest jobs
            enqueue(client, INGEST_QUEUE, INGEST_ACTOR, [(str(tenant), event_ids, True)])  # retry_failed

        with bound.begin() as conn:
            job.advance(event_ops.reprocess(conn, filters, send))

    job = call.admin.jobs.start("events.reprocess", call.principal, total, None if body.dry_run else work)
    return _started(call, "events.reprocess", job, body)


# -- jobs and the audit trail ------------------------------------------------------------------------------
class JobQuery(Page):
    status: JobStatus | None = None
    tenant_id: uuid.UUID | None = Field(default=None, description="Jobs started by this tenant's keys (a tenant "
                                                                   "key: its own, whatever is given)")


def list_jobs(call: Call) -> Listing[JobView]:
    """The jobs this admin process holds (running, and ended in the last six hours), newest first."""
    q: JobQuery = call.query
    jobs = call.admin.jobs.listed(call.principal, status=q.status, tenant=call.scope_tenant(q.tenant_id))
    page = jobs[q.offset:q.offset + q.limit]
    more = len(jobs) > q.offset + q.limit
    return Listing[JobView](items=[j.view() for j in page], next_offset=q.offset + q.limit if more else None)


def show_job(call: Call) -> JobView:
    return call.admin.jobs.get(call.ids["job_id"], call.principal).view()


def cancel_job(call: Call) -> JobView:
    job = call.admin.jobs.cancel(call.ids["job_id"], call.principal)
    with call.transaction() as conn:
        audit.record(conn, actor=call.actor, action="job.cancel", tenant_id=call.principal.tenant_id,
                     subject_type="job", subject_id=job.id)
    return job.view()


class AuditQuery(Page):
    tenant_id: uuid.UUID | None = None
    action: Short | None = Field(default=None, description="An action (inbox.disable) or its family (inbox)")
    since: datetime | None = None


def list_audit(call: Call) -> Listing[AuditEntry]:
    q = call.query
    filters = audit.AuditFilters(tenant=call.scope_tenant(q.tenant_id), action=q.action, since=q.since)
    with call.transaction() as conn:
        rows = audit.list_entries(conn, filters, limit=q.limit + 1, offset=q.offset)
    more = len(rows) > q.limit
    return Listing[AuditEntry](items=[AuditEntry.model_validate(r) for r in rows[: q.limit]],
                               next_offset=q.offset + q.limit if more else None)


def endpoints() -> list[Endpoint]:
    f = f"{PREFIX}/failures"
    return [
        Endpoint("GET", f, "List failed jobs, newest first", list_failures, Listing[FailureView], query=FailureQuery),
        Endpoint("GET", f + "/{failure_id}", "Show a failure with its message and traceback", show_failure,
                 FailureDetail, owner=("failure", "failure_id")),
        Endpoint("POST", f + "/replay", "Replay dead failures as a job (dry_run: count only)", replay_failures,
                 JobView, body=FailureAction, status=202),
        Endpoint("POST", f + "/discard", "Discard dead failures as a job (dry_run: count only)", discard_failures,
                 JobView, body=FailureAction, status=202),
        Endpoint("GET", f"{PREFIX}/events", "List stored events, newest first", list_events, Listing[EventView],
                 query=EventQuery),
        Endpoint("POST", f"{PREFIX}/events/reprocess", "Run stored events through the pipeline again, as a job",
                 reprocess_events, JobView, body=Reprocess, status=202),
        Endpoint("GET", f"{PREFIX}/jobs", "Jobs, newest first (a tenant key: its tenant's)", list_jobs,
                 Listing[JobView], query=JobQuery),
        Endpoint("GET", f"{PREFIX}/jobs/{{job_id}}", "A job's progress", show_job, JobView),
        Endpoint("POST", f"{PREFIX}/jobs/{{job_id}}/cancel", "Stop a job after the batch in hand", cancel_job,
                 JobView),
        Endpoint("GET", f"{PREFIX}/audit", "The audit trail, newest first (a tenant key: its tenant's)", list_audit,
                 Listing[AuditEntry], query=AuditQuery),
    ]
