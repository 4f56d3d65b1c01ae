"""Long operator work (replaying or discarding failures, reprocessing events) as jobs in the admin process.

A request starts a job and gets its id at once (202); `GET /v1/admin/jobs/{id}` shows its progress and
`POST /v1/admin/jobs/{id}/cancel` asks it to stop after the batch in hand (what is done stays done: each
batch commits on its own). A dry run counts what the job would touch and touches nothing.

Jobs live in the memory of the admin process that runs them, a few hours after they end: the durable
record of what they did is the audit trail and the rows they changed (a failure's `status`, an event's
`status`). A job belongs to the tenant of the key that started it (none for an operator key), and only keys
that may act on that tenant see it. A job about one subject (a tenant's export or deletion) runs alone: a
second one of the same kind is refused while the first runs. Files a job writes (an export's archive) live in
a temporary directory of its own, removed when the job is forgotten or the process stops.
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


class JobView(BaseModel):
    id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID | None = Field(description="The tenant of the key that started it; null: an operator")
    subject_id: uuid.UUID | None = Field(default=None, description="What it works on: the tenant exported or deleted")
    status: JobStatus
    dry_run: bool
    total: int = Field(description="Items matching when the job started")
    done: int = Field(description="Items handled so far")
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None = Field(default=None, description="What it produced, once it succeeded: an "
                                                                     "export's manifest, a deletion's counts")
    created_at: datetime
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
    finished_at: datetime | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    subject_id: uuid.UUID | None = None
    cancellable: bool = True
    result: dict[str, Any] | None = None
    files: Path | None = None  # a directory of the job's own, removed when the job is forgotten

    def view(self) -> JobView:
        return JobView(id=self.id, kind=self.kind, tenant_id=self.tenant_id, subject_id=self.subject_id,
                       status=self.status, dry_run=self.dry_run, total=self.total, done=self.done,
                       cancel_requested=self.cancel.is_set(), error=self.error, result=self.result,
                       created_at=self.created_at, finished_at=self.finished_at)

    def advance(self, count: int = 1) -> None:
        self.done += count

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


class Jobs:
    def __init__(self, workers: int = 2) -> None:
        self._jobs: dict[uuid.UUID, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="intake-admin-job")

    def start(self, kind: str, principal: Principal, total: int, work: Callable[[Job], None] | None, *,
              subject_id: uuid.UUID | None = None, cancellable: bool = True) -> Job:
        """A job over `total` items; with no `work` (a dry run) it is finished at once. A job about
        `subject_id` is refused (Conflict) while another of its kind about the same subject runs."""
        job = Job(uuid.uuid4(), kind, principal.tenant_id, dry_run=work is None, total=total, subject_id=subject_id,
                  cancellable=cancellable)
        self._forget_old()
        with self._lock:
            if subject_id is not None:
                for other in self._jobs.values():
                    if (other.kind, other.subject_id, other.status) == (kind, subject_id, "running"):
                        raise Conflict(f"job {other.id} ({kind}) is already running for {subject_id}")
            self._jobs[job.id] = job
        if work is None:
            self._finish(job, "succeeded")
        else:
            self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        try:
            work(job)
        except Exception as exc:
            log.error("admin.job.failed", job_id=str(job.id), kind=job.kind, error=repr(exc))
            job.error = f"{type(exc).__name__}: {exc}"[:500]
            self._finish(job, "failed")
        else:
            self._finish(job, "cancelled" if job.cancelled else "succeeded")
        if job.files is not None:  # its files go on time even if no request comes to forget the job
            timer = threading.Timer(KEEP_SECONDS + 1, self._forget_old)
            timer.daemon = True
            timer.start()

    @staticmethod
    def _finish(job: Job, status: JobStatus) -> None:
        job.finished_at = datetime.now(UTC)
        job.status = status

    def get(self, job_id: uuid.UUID, principal: Principal) -> Job:
        self._forget_old()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if not principal.operator and job.tenant_id != principal.tenant_id:
            raise NotFound(f"no job {job_id}")  # another tenant's job is, to a tenant key, no job
        return job

    def cancel(self, job_id: uuid.UUID, principal: Principal) -> Job:
        job = self.get(job_id, principal)
        if job.status != "running":
            raise Conflict(f"the job has already ended ({job.status})")
        if not job.cancellable:
            raise Conflict(f"a {job.kind} job cannot be stopped once started")
        job.cancel.set()
        return job

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
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
