"""The whole fleet on a realistic corpus: real HTTP ingress, real dramatiq worker processes, real data."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import httpx
import psutil
import redis
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from tests.factories import new_inbox
from tests.fleet import CorpusTenant, post_all, settle
from tests.processes import wait_for, worker

WORKER_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "100",
              "INTAKE_JOB_MAX_BACKOFF_MS": "2000"}


def jobs_left(client: redis.Redis) -> int:
    """Ingest jobs queued, delayed for a retry or in a worker's hands: dramatiq drops a job's body once acked."""
    return int(client.hlen("dramatiq:ingest.msgs")) + int(client.hlen("dramatiq:ingest.DQ.msgs"))


def cross_tenant_links(admin_engine: Engine) -> int:
    with admin_engine.connect() as conn:
        return conn.execute(text("""
            SELECT (SELECT count(*) FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE c.tenant_id <> m.tenant_id)
                 + (SELECT count(*) FROM messages m JOIN conversations v ON v.id = m.conversation_id
                    WHERE v.tenant_id <> m.tenant_id)
                 + (SELECT count(*) FROM conversations v JOIN contacts c ON c.id = v.contact_id
                    WHERE c.tenant_id <> v.tenant_id)""")).scalar_one()


def test_corpus_through_two_worker_processes_is_exact_and_idempotent(
    server: str, app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis
) -> None:
    tenants = [CorpusTenant(app_engine, "US", 70, seed=1), CorpusTenant(app_engine, "FI", 70, seed=2),
               CorpusTenant(app_engine, "US", 50, seed=3)]
    assert sum(len(t.corpus.deliveries) for t in tenants) >= 2000
    with worker(processes=2, threads=6, env=WORKER_ENV):
        posted = asyncio.run(post_all(server, tenants))
        assert set(posted.codes) == {200}, posted.transport_errors[:3]
        settle(tenants, app_engine)
        for tenant in tenants:
            assert tenant.counts(app_engine) == tenant.expected()
        assert cross_tenant_links(admin_engine) == 0

        # The providers send everything again, twice at once: nothing changes.
        async def twice() -> None:
            await asyncio.gather(post_all(server, tenants), post_all(server, tenants))

        asyncio.run(twice())
        # Duplicate jobs: every event reprocessed twice, concurrently.
        from workers.actors import ingest_events

        for tenant in tenants:
            with app_engine.begin() as conn:
                bind_tenant(conn, tenant.tenant_id)
                ids = [str(r[0]) for r in conn.execute(text("UPDATE inbound_events SET status = 'received' "
                                                            "RETURNING id"))]
            for start in range(0, len(ids), 50):
                ingest_events.send(str(tenant.tenant_id), ids[start:start + 50])
                ingest_events.send(str(tenant.tenant_id), ids[start:start + 50])
        settle(tenants, app_engine)
        wait_for(lambda: jobs_left(redis_client) == 0, timeout=60)  # the second copy of each job finished too
        for tenant in tenants:
            assert tenant.counts(app_engine) == tenant.expected()


def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(
    server: str, app_engine: Engine, redis_client: object
) -> None:
    tenants = [CorpusTenant(app_engine, "US", 60, seed=11)]
    assert set(asyncio.run(post_all(server, tenants)).codes) == {200}  # queued up, no worker yet
    with worker(processes=1, threads=4, env=WORKER_ENV) as first:
        wait_for(lambda: tenants[0].counts(app_engine)["messages"] > 50, timeout=60, interval=0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the parent and its worker process, mid-batch
        first.wait(10)
    progress = tenants[0].counts(app_engine)
    assert progress["unprocessed"] > 0, "the kill came too late to test anything"
    with worker(processes=1, threads=4, env=WORKER_ENV):
        settle(tenants, app_engine, timeout=120)
    assert tenants[0].counts(app_engine) == tenants[0].expected()


def test_worker_processes_expose_prometheus_metrics(stack: dict[str, str], app_engine: Engine) -> None:
    from tests.processes import free_port

    port = free_port()
    inbox = new_inbox(app_engine, "api")
    with worker(processes=1, threads=2, env={**WORKER_ENV, "INTAKE_WORKER_METRICS_PORT": str(port)}) as proc:
        from workers.actors import ingest_events

        ingest_events.send(str(inbox.tenant_id), [str(uuid.uuid4())])
        def scraped() -> bool:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.TransportError:
                return False
            return "dramatiq_messages_total" in body and 'actor_name="ingest_events"' in body
        wait_for(scraped, timeout=30, interval=0.5)
        # As the Procfile runs it (no INTAKE_METRICS_HOST): on this machine only, not on every interface.
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        hosts = {c.laddr.ip for p in family for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert hosts == {"127.0.0.1"}


# What dramatiq's command line does in each worker process: `for_workers`, the actors, a worker started.
BOOT_A_WORKER = """
import gc, dramatiq
from workers.broker import for_workers
for_workers()
import workers.actors
before = gc.get_freeze_count()
worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=1)
worker.start()
print(before, gc.get_freeze_count())
worker.stop()
"""


def test_a_worker_process_leaves_its_booted_heap_out_of_full_collections(stack: dict[str, str]) -> None:
    """Once booted, a worker process freezes what it holds (modules, schemas, compiled statements): full
    collections no longer walk it. Nothing is frozen before the worker boots: the hook is the worker's, so
    processes that only build the broker (the CLI, the admin process) freeze nothing."""
    done = subprocess.run([sys.executable, "-c", BOOT_A_WORKER], env={**os.environ, **stack}, capture_output=True,
                          text=True, timeout=120, check=True)
    before, after = (int(n) for n in done.stdout.split())
    assert before == 0
    assert after > 50_000
