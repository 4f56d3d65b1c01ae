"""A job's tenant, confirmed by the TenantScope middleware before the actor runs.

A tenant that names nothing is a permanent failure (to the ledger at once); a tenant that cannot be looked up
because PostgreSQL is away (restarting, failing over) is the database's own error, retryable: the job is
retried, not dead-lettered as a bug. Real engines: the fleet's, and one whose server refuses connections.
"""

from __future__ import annotations

import uuid

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

from db.engine import make_engine
from pipelines.errors import UnknownTenantError, is_retryable
from pipelines.inboxes import create_tenant
from tests.processes import free_port
from workers.middleware.jobs import TenantScope, job_tenant


def job(tenant: object) -> MessageProxy:
    return MessageProxy(dramatiq.Message(queue_name="ingest", actor_name="ingest_events", args=(tenant, []),
                                         kwargs={}, options={}))


def confirmed(scope: TenantScope, tenant: object) -> uuid.UUID:
    """What the actor gets when it asks for its tenant (or the error it raises), the middleware called as a
    worker calls it: dramatiq logs and swallows what a middleware raises before a job."""
    broker, message = StubBroker(middleware=[scope]), job(tenant)
    broker.emit_before("process_message", message)
    try:
        return job_tenant()
    finally:
        broker.emit_after("process_message", message, result=None)


def test_a_tenant_the_database_cannot_look_up_now_is_a_retryable_failure_not_a_dead_letter(
        app_engine: Engine) -> None:
    with app_engine.begin() as conn:
        tenant = create_tenant(conn, "Confirmed tenant")
    away = make_engine(f"postgresql://intake_app@127.0.0.1:{free_port()}/intake", prepared_statements=False)
    try:
        scope = TenantScope(lambda: away)
        with pytest.raises(Exception) as raised:
            confirmed(scope, str(tenant))
        assert not isinstance(raised.value, UnknownTenantError | RuntimeError)
        assert is_retryable(raised.value), repr(raised.value)
    finally:
        away.dispose()
    scope.engine = lambda: app_engine  # PostgreSQL is back: the same middleware confirms the tenant
    assert confirmed(scope, str(tenant)) == tenant
    with pytest.raises(UnknownTenantError):
        confirmed(TenantScope(lambda: app_engine), str(uuid.uuid4()))


@pytest.mark.parametrize("hostile", ["", "not-a-uuid", "\x00" * 64, "\u202e5e76ede3-e2ca-4edd-998f-32145271c52d", "x" * 100_000,
                                     ["nested", ["list"]], 12345])
def test_a_job_naming_no_tenant_is_refused_permanently_without_a_query(hostile: object) -> None:
    def no_database() -> Engine:
        raise AssertionError("a malformed tenant id reached the database")

    with pytest.raises(UnknownTenantError, match="not a tenant id"):
        confirmed(TenantScope(no_database), hostile)
