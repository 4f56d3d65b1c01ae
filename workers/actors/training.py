"""The `ai` queue's training actor: one tenant's classifier trained from its examples (`workers.training`
schedules it, debounced)."""

from __future__ import annotations

import ctypes
import gc

import dramatiq

from db.tenancy import bind_tenant
from pipelines.ai import training
from workers.broker import current
from workers.middleware.jobs import job_tenant, report
from workers.queues import AI_QUEUE
from workers.resources import engine
from workers.training import TRAIN_ACTOR, pending_key

broker = current()  # actors bind to the broker installed when they are declared

TIME_LIMIT_MS = 30 * 60_000  # 100,000 examples with cross-validation take minutes on a small machine


@dramatiq.actor(queue_name=AI_QUEUE, actor_name=TRAIN_ACTOR, time_limit=TIME_LIMIT_MS, max_retries=3)
def train_tenant_model(tenant_id: str) -> None:
    """Train the tenant's classifier and store it as its next model version."""
    tenant = job_tenant()
    broker.client.delete(pending_key(tenant))  # a change from now on schedules another run
    with engine().begin() as conn:
        bind_tenant(conn, tenant)
        view = training.train_tenant(conn, tenant)
    report(version=view.version, examples=view.examples, categories=view.categories, accuracy=view.accuracy)
    release_memory()


def release_memory() -> None:
    """Give training's heap back to the system: its features and matrices are freed, but glibc keeps the pages
    (BANKING77's training peaks at about 750 MB; trimmed, the process drops to what classifying needs)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass
