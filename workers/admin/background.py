"""Background admin jobs: long operator work (replaying or discarding failures, reprocessing events, a tenant's
export or deletion) run in the admin process's own thread pools.

A request starts a job and gets its id at once (202); `GET /v1/admin/jobs/{id}` shows its progress and
`POST /v1/admin/jobs/{id}/cancel` asks it to stop after the batch in hand (what is done stays done: each
batch commits on its own). A dry run counts what the job would touch and touches nothing.

Jobs live in the memory of the admin process that runs them, a few hours after they end: the durable
record of what they did is the audit trail and the rows they changed (a failure's `status`, an event's
`status`). A job belongs to the tenant of the key that started it (none for an operator key), and only keys
that may act on that tenant see it. A job about one subject (a tenant's export or deletion) runs alone: a
second one of the same kind is refused while the first runs. Files a job writes (an export's archive) live in
a temporary directory of its own, removed when the job is forgotten, its tenant is deleted, or the process
stops.

Fairness: a tenant runs at most one job at a time (a second is refused with 409 naming the one running, so
a script learns at once what to wait for or cancel), and the jobs of tenant keys run on threads of their own.
Operator jobs, deletions among them, run on a separate pool, so however many tenants keep their threads busy
(a paced replay waits most of its time), an operator's export or deletion starts at once. A job waiting for
a free thread of its pool is `running` with no `started_at` yet.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field

from pipelines.control.errors import Conflict, NotFound
from pipelines.control.keys import Principal

log = structlog.get_logger("intake.admin.jobs")

JobStatus = Literal["running", "succeeded", "failed", "cancelled"]
KEEP_SECONDS = 6 * 3600
TENANT_THREADS, OPERATOR_THREADS = 4, 2
# How long a tenant's deletion waits for that tenant's running jobs to stop (they stop between two batches).
STOP_WAIT_SECONDS = 60.0


class JobView(BaseModel):
    id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID | None = Field(description="The tenant of the key that started it; null: an operator")
    subject_id: uuid.UUID | None = Field(default=None, description="What it works on: the tenant exported or deleted")
    status: JobStatus
    cancellable: bool = Field(default=True, description="False for a deletion: once started it runs to its end")
    dry_run: bool
    total: int = Field(description="Items matching when the job started")
    done: int = Field(description="Items handled so far")
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None = Field(default=None, description="What it produced, once it succeeded: an "
                                                                     "export's manifest, a deletion's counts")
    created_at: datetime
    started_at: datetime | None = Field(default=None, description="When a thread took it up; null while it "
                                                                   "waits for a free one")
    finished_at: datetime | None


@dataclass
class Job:
    id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID | None
    dry_run: bool
    total: int
    done: int = 0
    status: JobStatus = "running"
    error: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    subject_id: uuid.UUID | None = None
    cancellable: bool = True
    result: dict[str, Any] | None = None
    files: Path | None = None  # a directory of the job's own, removed when the job is forgotten

    def view(self) -> JobView:
        return JobView(id=self.id, kind=self.kind, tenant_id=self.tenant_id, subject_id=self.subject_id,
                       status=self.status, cancellable=self.cancellable, dry_run=self.dry_run, total=self.total,
                       done=self.done, cancel_requested=self.cancel.is_set(), error=self.error, result=self.result,
                       created_at=self.created_at, started_at=self.started_at, finished_at=self.finished_at)

    def advance(self, count: int = 1) -> None:
        self.done += count

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


class Jobs:
    def __init__(self, tenant_threads: int = TENANT_THREADS, operator_threads: int = OPERATOR_THREADS) -> None:
        self._jobs: dict[uuid.UUID, Job] = {}
        self._lock = threading.Lock()
        self._tenant_pool = ThreadPoolExecutor(tenant_threads, thread_name_prefix="intake-admin-job-tenant")
        self._operator_pool = ThreadPoolExecutor(operator_threads, thread_name_prefix="intake-admin-job-operator")

    def start(self, kind: str, principal: Principal, total: int, work: Callable[[Job], None] | None, *,
              subject_id: uuid.UUID | None = None, cancellable: bool = True) -> Job:
        """A job over `total` items; with no `work` (a dry run) it is finished at once. A job about
        `subject_id` is refused (Conflict) while another of its kind about the same subject runs, and a
        tenant key's job while another job of its tenant runs."""
        job = Job(uuid.uuid4(), kind, principal.tenant_id, dry_run=work is None, total=total, subject_id=subject_id,
                  cancellable=cancellable)
        self._forget_old()
        with self._lock:
            for other in self._jobs.values():
                if other.status != "running":
                    continue
                if subject_id is not None and (other.kind, other.subject_id) == (kind, subject_id):
                    raise Conflict(f"job {other.id} ({kind}) is already running for {subject_id}")
                if work is not None and job.tenant_id is not None and other.tenant_id == job.tenant_id:
                    raise Conflict(f"job {other.id} ({other.kind}) of this tenant is still running, and a tenant "
                                   f"runs one job at a time: wait for it to end or cancel it")
            self._jobs[job.id] = job
        if work is None:
            self._finish(job, "succeeded")
        else:
            pool = self._operator_pool if job.tenant_id is None else self._tenant_pool
            pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        with self._lock:
            if job.ended.is_set():  # cancelled while it waited for a thread: it never starts
                return
            job.started_at = datetime.now(UTC)
        try:
            work(job)
        except Exception as exc:
            log.error("admin.job.failed", job_id=str(job.id), kind=job.kind, error=repr(exc))
            job.error = f"{type(exc).__name__}: {exc}"[:500]
            self._finish(job, "failed")
        else:
            self._finish(job, "cancelled" if job.cancelled else "succeeded")
        with self._lock:
            forgotten = job.id not in self._jobs
        if forgotten:  # its tenant was deleted while it ran: whatever it wrote goes now
            _remove_files(job)
        elif job.files is not None:  # its files go on time even if no request comes to forget the job
            timer = threading.Timer(KEEP_SECONDS + 1, self._forget_old)
            timer.daemon = True
            timer.start()

    @staticmethod
    def _finish(job: Job, status: JobStatus) -> None:
        job.finished_at = datetime.now(UTC)
        job.status = status
        job.ended.set()

    def get(self, job_id: uuid.UUID, principal: Principal) -> Job:
        self._forget_old()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if not principal.operator and job.tenant_id != principal.tenant_id:
            raise NotFound(f"no job {job_id}")  # another tenant's job is, to a tenant key, no job
        return job

    def listed(self, principal: Principal, *, status: JobStatus | None = None, tenant: uuid.UUID | None = None,
               ) -> list[Job]:
        """The jobs `principal` may see, newest first: an operator every one (or, with `tenant`, the ones that
        tenant's keys started), a tenant key its tenant's."""
        self._forget_old()
        if not principal.operator:
            tenant = principal.tenant_id
        with self._lock:
            jobs = [j for j in self._jobs.values()
                    if (status is None or j.status == status) and (tenant is None or j.tenant_id == tenant)]
        return sorted(jobs, key=lambda j: (j.created_at, j.id.hex), reverse=True)

    def forget_tenant(self, tenant: uuid.UUID, *, keep: uuid.UUID | None = None) -> int:
        """Stop and forget every job of a deleted tenant (started by its keys, or about it), except `keep`,
        and remove their files (an export's archive): what is gone cannot be downloaded. Waits, at most
        STOP_WAIT_SECONDS, for the ones running to stop; how many were forgotten."""
        with self._lock:
            theirs = [j for j in self._jobs.values() if j.id != keep and tenant in (j.tenant_id, j.subject_id)]
        for job in theirs:
            self._stop(job)
        for job in theirs:
            job.ended.wait(STOP_WAIT_SECONDS)
        with self._lock:
            for job in theirs:
                self._jobs.pop(job.id, None)
        for job in theirs:
            _remove_files(job)
        if theirs:
            log.info("admin.jobs.tenant_forgotten", tenant_id=str(tenant), jobs=len(theirs))
        return len(theirs)

    def cancel(self, job_id: uuid.UUID, principal: Principal) -> Job:
        job = self.get(job_id, principal)
        if job.status != "running":
            raise Conflict(f"the job has already ended ({job.status})")
        if not job.cancellable:
            raise Conflict(f"a {job.kind} job cannot be stopped once started")
        self._stop(job)
        return job

    def _stop(self, job: Job) -> None:
        """Ask a job to stop; one still waiting for a thread ends here, cancelled, and never runs (so its
        tenant may start another at once)."""
        job.cancel.set()
        with self._lock:
            if job.started_at is None and not job.ended.is_set():
                self._finish(job, "cancelled")

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()
        for pool in (self._tenant_pool, self._operator_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        for job in list(self._jobs.values()):
            _remove_files(job)

    def _forget_old(self) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for job_id, job in list(self._jobs.items()):
                if job.finished_at is not None and (now - job.finished_at).total_seconds() > KEEP_SECONDS:
                    del self._jobs[job_id]
                    _remove_files(job)


def _remove_files(job: Job) -> None:
    if job.files is not None:
        shutil.rmtree(job.files, ignore_errors=True)
