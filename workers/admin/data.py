"""The endpoints of the data lifecycle: erasure of one person, storage figures, tenant export and deletion.

They call the functions behind `intake contact erase` and `intake tenant stats|export|delete` the way those
commands do: a tenant's rows are read and changed as the fleet's role bound to that tenant (row-level
security holds, whoever the key is), waiting jobs in Redis are rewritten or removed after the database has
committed, and the deletion's audit row, which belongs to no tenant, is written as the maintenance role.
Export and deletion are jobs (`workers.admin.background`) with progress; an export's archive waits in a temporary
file for `GET /v1/admin/jobs/{id}/download` until the job is forgotten or the tenant is deleted. Storage
figures are read at most once a short while per tenant (`workers.admin.cache`), and say when.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from sqlalchemy import select
from starlette.responses import FileResponse

from db.schema import tenants
from db.tenancy import TenantId, resolve_tenant
from pipelines import audit
from pipelines.control.common import owner_of, paged
from pipelines.control.errors import Conflict, Invalid, NotFound
from pipelines.control.fields import Model, clean_text
from pipelines.control.models import Listing, Page
from pipelines.errors import PermanentError
from pipelines.lifecycle import deletion, erasure, export, jobs, stats
from pipelines.lifecycle.retention import RetentionPolicy
from workers.admin.background import Job, JobView
from workers.admin.http import Call, Endpoint, TenantBound
from workers.ops import erasure as erasing
from workers.queues import NAMESPACE

PREFIX = "/v1/admin"
EXPORT, DELETE = "tenant.export", "tenant.delete"


def _tenant(call: Call) -> TenantId:
    assert call.tenant is not None  # every route that calls this names its tenant
    return TenantId(call.tenant)


def as_fleet(call: Call, tenant: TenantId) -> TenantBound:
    """The tenant's rows as the fleet sees them (its role, bound to the tenant), as the commands read them."""
    return TenantBound(call.admin.app_engine, tenant, call.statement_timeout_ms)


def _redis(call: Call) -> redis.Redis:
    if call.admin.redis is None:
        raise RuntimeError("the admin process has no REDIS_URL, so it cannot reach the jobs waiting in Redis")
    return call.admin.redis


# -- erasure of one person ---------------------------------------------------------------------------------
class Identity(Model):
    kind: Literal["phone", "email", "telegram", "external"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=erasure.MAX_VALUE),
                     AfterValidator(clean_text)] = Field(description="A phone in any international format, "
                                                                     "an email address, a Telegram or external id")


class EraseContact(Model):
    """The person to erase: exactly one of `contact_id` or `identity`."""

    contact_id: uuid.UUID | None = None
    identity: Identity | None = None


class ErasureView(BaseModel):
    contact_id: uuid.UUID | None = Field(description="The contact erased; null when no contact has the identity")
    already_erased: bool = Field(description="Nothing was left to erase: running it again changes nothing")
    counts: dict[str, int] = Field(description="Rows changed per kind (messages, events, identities, ...)")
    jobs: int = Field(description="Jobs waiting in Redis that were rewritten without the erased ids, or removed")


def erase_contact(call: Call) -> ErasureView:
    body: EraseContact = call.body
    if (body.contact_id is None) == (body.identity is None):
        raise Invalid({"contact_id": "name the person with exactly one of contact_id or identity"})
    named = None
    if body.identity is not None:
        try:
            named = erasure.parse_identity(f"{body.identity.kind}:{body.identity.value}")
        except erasure.ErasureError as exc:
            raise Invalid({"identity.value": str(exc)}) from None
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        try:
            found = erasure.find_contact(conn, tenant, contact_id=body.contact_id, identity=named)
        except erasure.ErasureError as exc:
            raise NotFound(str(exc)) from None
        result = erasing.erase(conn, tenant, found, actor=call.actor, settings=call.admin.settings, identity=named)
    changed = erasing.finish(_redis(call), tenant, result, call.admin.settings)
    return ErasureView.model_validate({**result.as_dict(), "jobs": changed})


# -- storage figures ---------------------------------------------------------------------------------------
class TableStats(BaseModel):
    rows: int
    bytes: int = Field(description="Stored size of the rows (pg_column_size), not their share of indexes")
    oldest: datetime | date | None
    newest: datetime | date | None


class RetentionDue(BaseModel):
    days: int = Field(description="How long this kind of record is kept")
    due_now: int = Field(description="Records the clock removes on its next run")
    next_due_at: datetime | None = Field(description="When the oldest record still kept falls due")


class TenantStats(BaseModel):
    tenant_id: uuid.UUID
    rows: int
    bytes: int
    tables: dict[str, TableStats]
    retention: dict[str, RetentionDue] = Field(description="Per kind: event_bodies, failures, audit_rows, "
                                                           "ai_usage_rows, change_events")
    cached_at: datetime = Field(description="When these figures were read: they are reused for "
                                            "INTAKE_ADMIN_STATS_CACHE_SECONDS (default 60) before being read again")


def _stats(call: Call, tenant: TenantId) -> TenantStats:
    defaults = RetentionPolicy.defaults(call.admin.settings)

    def read() -> dict[str, Any]:
        with as_fleet(call, tenant).begin() as conn:
            settings = conn.execute(select(tenants.c.settings).where(tenants.c.id == tenant)).scalar()
            return stats.tenant_stats(conn, tenant, defaults.for_tenant(settings), datetime.now(UTC))

    figures, read_at = call.admin.stats_cache.get(tenant, read)
    return TenantStats.model_validate({**figures, "cached_at": read_at})


def tenant_stats(call: Call) -> TenantStats:
    return _stats(call, _tenant(call))


def all_stats(call: Call) -> Listing[TenantStats]:
    """A page of tenants (a tenant key: its own), oldest first, each with its figures."""
    query = select(tenants.c.id).order_by(tenants.c.created_at, tenants.c.id)
    with call.transaction() as conn:
        page = paged(conn, query, call.query, lambda row: TenantId(row["id"]))
    return Listing[TenantStats](items=[_stats(call, t) for t in page.items], next_offset=page.next_offset)


# -- export ------------------------------------------------------------------------------------------------
class Stopped(PermanentError):
    """The job was asked to stop: the export ends between two batches and leaves no archive."""


def _archive(job: Job) -> Path:
    assert job.files is not None and job.subject_id is not None
    return job.files / f"intake-export-{job.subject_id}.zip"


def export_tenant(call: Call) -> JobView:
    tenant = _tenant(call)
    engine = call.admin.app_engine

    def advance(job: Job, rows: int) -> None:
        job.advance(rows)
        if job.cancelled:
            raise Stopped

    recorded = threading.Event()  # set once the request's audit row is committed (or failed to be)

    def work(job: Job) -> None:
        # The snapshot is taken after the export's own audit row commits, so the archive always holds it: a
        # job that started first took it or not, as the threads happened to run.
        recorded.wait(timeout=60)
        if job.cancelled:
            return
        job.files = Path(tempfile.mkdtemp(prefix="intake-export-"))
        # One REPEATABLE READ snapshot as the fleet's role bound to the tenant, as `intake tenant export` reads.
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            resolve_tenant(conn, tenant)
            job.total = sum(export.count_rows(conn, tenant).values())
            try:
                manifest = export.export_tenant(conn, tenant, _archive(job), on_rows=lambda n: advance(job, n))
            except Stopped:
                return
        job.result = manifest.as_dict()

    job = call.admin.jobs.start(EXPORT, call.principal, 0, work, subject_id=tenant)
    try:
        with call.transaction() as conn:  # nothing changes, but every copy of a tenant's data leaving is on record
            audit.record(conn, actor=call.actor, action=EXPORT, tenant_id=tenant, subject_type="tenant",
                         subject_id=tenant, after={"job_id": str(job.id)})
    except BaseException:
        job.cancel.set()  # no export leaves without its record
        raise
    finally:
        recorded.set()
    return job.view()


def download_export(call: Call) -> FileResponse:
    job = call.admin.jobs.get(call.ids["job_id"], call.principal)
    if job.kind != EXPORT:
        raise NotFound(f"job {job.id} ({job.kind}) has nothing to download")
    if job.status != "succeeded":
        raise Conflict(f"the export is {job.status} ({job.done} of {job.total} rows); download it once it succeeded")
    assert job.subject_id is not None  # an export is about its tenant
    try:  # deleted by `intake tenant delete`, or by another admin process: the archive goes now
        with call.admin.owner_engine.connect() as conn:
            owner_of(conn, "tenant", job.subject_id)
    except NotFound:
        call.admin.jobs.forget_tenant(job.subject_id)
        raise NotFound(f"tenant {job.subject_id} was deleted, and its exports with it") from None
    return FileResponse(_archive(job), media_type="application/zip", filename=_archive(job).name,
                        headers={"Cache-Control": "no-store"})


# -- deletion ----------------------------------------------------------------------------------------------
class ConfirmDelete(Model):
    confirm: uuid.UUID = Field(description="The tenant's id again")


def delete_tenant(call: Call) -> JobView:
    tenant = _tenant(call)
    if call.body.confirm != tenant:
        raise Invalid({"confirm": "must repeat the tenant's id"})
    client, actor = _redis(call), call.actor
    engine, owner, admin = call.admin.app_engine, call.admin.owner_engine, call.admin

    def work(job: Job) -> None:
        # As `intake tenant delete`: disable (nothing new arrives), drop its waiting jobs, delete in batches.
        deletion.disable(engine, tenant)
        jobs.forget_jobs(client, NAMESPACE, str(tenant))
        # Its exports stop first, so none goes on writing the rows being deleted into an archive.
        admin_jobs = admin.jobs.forget_tenant(tenant, keep=job.id)
        with engine.begin() as conn:
            resolve_tenant(conn, tenant)
            job.total = sum(export.count_rows(conn, tenant).values())
        deleted = deletion.delete_rows(engine, tenant, on_rows=job.advance)
        # Jobs sent while the rows went, and keys that name the tenant.
        redis_jobs = jobs.forget_jobs(client, NAMESPACE, str(tenant))
        redis_keys = jobs.forget_tenant_keys(client, str(tenant))
        deletion.record_deletion(owner, tenant, deleted, actor=actor)
        # The admin process's own copies: exports started meanwhile, their archives, the storage figures.
        admin_jobs += admin.jobs.forget_tenant(tenant, keep=job.id)
        admin.stats_cache.forget(tenant)
        job.result = {"tenant_id": str(tenant), "deleted": deleted, "rows": sum(deleted.values()),
                      "redis_jobs": redis_jobs, "redis_keys": redis_keys, "admin_jobs": admin_jobs}

    # Half a tenant is worse than either whole or none: once confirmed, the deletion runs to its end.
    return call.admin.jobs.start(DELETE, call.principal, 0, work, subject_id=tenant, cancellable=False).view()


def endpoints() -> list[Endpoint]:
    t, own_tenant = f"{PREFIX}/tenants/{{tenant_id}}", ("tenant", "tenant_id")
    return [
        Endpoint("POST", t + "/erase-contact", "Erase one person from a tenant (idempotent)", erase_contact,
                 ErasureView, body=EraseContact, owner=own_tenant),
        Endpoint("GET", t + "/stats", "A tenant's rows, bytes, oldest and newest data, and retention due",
                 tenant_stats, TenantStats, owner=own_tenant),
        Endpoint("GET", f"{PREFIX}/stats", "Storage figures of every tenant (a tenant key: its own)", all_stats,
                 Listing[TenantStats], query=Page),
        Endpoint("POST", t + "/export", "Export a tenant as a job; download the archive when it succeeded",
                 export_tenant, JobView, status=202, owner=own_tenant),
        Endpoint("GET", f"{PREFIX}/jobs/{{job_id}}/download", "The archive of an export job (application/zip)",
                 download_export, None, media_type="application/zip"),
        Endpoint("POST", t + "/delete", "Delete a tenant and everything it holds, as a job (cannot be stopped)",
                 delete_tenant, JobView, body=ConfirmDelete, status=202, owner=own_tenant, operator_only=True),
    ]
