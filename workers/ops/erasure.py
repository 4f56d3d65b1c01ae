"""Erasure of one person as the CLI and the admin API run it: the same function, ledger and jobs for both.

The erasure runs the tenant's backlog through the ingest pipeline first (`pipelines.lifecycle.erasure`), so
it records that backlog's failures in the ledger as the ingest actor does, in its transaction; after the
commit, the waiting jobs that name the erased rows are rewritten, the AI job of each message the backlog
stored is sent, as the actor would have sent it, and a training is scheduled when the erasure dropped the
tenant's classifiers.
"""

from __future__ import annotations

import uuid
from functools import partial

import redis
from sqlalchemy import Connection

from config import Settings
from db.tenancy import TenantId
from pipelines import audit
from pipelines.lifecycle import erasure, jobs
from workers.middleware.ledger import settle_batch
from workers.queues import AI_ACTOR, AI_QUEUE, NAMESPACE, enqueue
from workers.resources import ingest_policy
from workers.training import schedule


def erase(conn: Connection, tenant: TenantId, contact_id: uuid.UUID | None, *, actor: audit.Actor | str,
          settings: Settings, identity: tuple[str, str] | None = None) -> erasure.Erasure:
    """Erase the person (a contact, or an identity nobody may have yet) in the caller's transaction, bound to
    `tenant`; call `finish` after its commit."""
    return erasure.erase_contact(conn, tenant, contact_id, actor=actor, policy=ingest_policy(settings),
                                 settle=partial(settle_batch, tenant=tenant), identity=identity)


def finish(client: redis.Redis, tenant: TenantId, result: erasure.Erasure, settings: Settings) -> int:
    """After the commit: jobs rewritten without the erased ids and redacted of the person (how many changed),
    AI jobs for the messages the backlog stored, and a training of the tenant's classifier when the erasure
    dropped the ones that had learned the person's words."""
    erased = {str(i) for i in result.job_ids}
    redact = result.redactor.json if result.redactor is not None and not result.redactor.empty else None
    changed = jobs.forget_jobs(client, NAMESPACE, str(tenant), erased, redact) if erased or redact else 0
    if result.retrain:
        schedule(client, tenant, settings.ai_train_delay_seconds)
    if result.stored:  # sent by name, as the ingest actor's own AI jobs would have been
        enqueue(client, AI_QUEUE, AI_ACTOR, [(str(tenant), [str(m) for m in result.stored])])
    return changed
