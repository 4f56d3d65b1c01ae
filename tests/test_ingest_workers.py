"""The whole fleet on a realistic corpus: real HTTP ingress, real dramatiq worker processes, real data."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.inboxes import CreatedInbox
from tests import corpus as corpus_mod
from tests.factories import new_inbox
from tests.processes import wait_for, web_server, worker
from tests.webhooks import sign

WORKER_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "100",
              "INTAKE_JOB_MAX_BACKOFF_MS": "2000"}


@pytest.fixture(scope="module")
def server(stack: dict[str, str]) -> Iterator[str]:
    with web_server({"INTAKE_RATE_LIMIT_PER_SECOND": "100000", "INTAKE_RATE_LIMIT_BURST": "100000"}) as base:
        yield base


class Tenant:
    def __init__(self, engine: Engine, region: str, count: int, seed: int) -> None:
        first = new_inbox(engine, "twilio", settings={"default_region": region}, tenant_name=f"Corpus {region}")
        self.tenant_id = first.tenant_id
        self.inboxes: dict[str, CreatedInbox] = {"twilio": first}
        import os

        from pipelines.crypto import SecretBox
        from pipelines.inboxes import create_inbox

        with engine.begin() as conn:
            bind_tenant(conn, first.tenant_id)
            for channel in ("whatsapp", "postmark", "api"):
                given = {"app_secret": "meta-app-secret"} if channel == "whatsapp" else None
                self.inboxes[channel] = create_inbox(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), first.tenant_id,
                                                     channel, given_secrets=given, settings={"default_region": region})
        self.corpus = corpus_mod.build(region, count, seed)

    def counts(self, engine: Engine) -> dict[str, int]:
        with engine.begin() as conn:
            bind_tenant(conn, self.tenant_id)
            one = lambda sql: conn.execute(text(sql)).scalar_one()  # noqa: E731
            return {
                "contacts": one("SELECT count(*) FROM contacts WHERE merged_into_id IS NULL"),
                "identities": one("SELECT count(*) FROM contact_identities"),
                "open_conversations": one("SELECT count(*) FROM conversations WHERE status = 'open'"),
                "conversations": one("SELECT count(*) FROM conversations"),
                "messages": one("SELECT count(*) FROM messages"),
                "counted": one("SELECT coalesce(sum(message_count), 0) FROM conversations"),
                "unprocessed": one("SELECT count(*) FROM inbound_events WHERE status <> 'processed'"),
            }

    def expected(self) -> dict[str, int]:
        people = len(self.corpus.people)
        return {"contacts": people, "identities": 2 * people, "open_conversations": 4 * people,
                "conversations": 4 * people, "messages": self.corpus.messages, "counted": self.corpus.messages,
                "unprocessed": 0}


async def post_all(base: str, tenants: list[Tenant], concurrency: int = 32) -> list[int]:
    jobs = []
    for tenant in tenants:
        for d in tenant.corpus.deliveries:
            inbox = tenant.inboxes[d.channel]
            url = f"{base}/v1/webhooks/{d.channel}/{inbox.id}"
            headers, body = sign(d.channel, inbox.secrets, url, d.body, d.content_type, webhook_id=d.webhook_id)
            jobs.append((url, headers, body))
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(url: str, headers: dict[str, str], body: bytes) -> int:
            async with semaphore:
                return (await client.post(url, content=body, headers=headers)).status_code
        return await asyncio.gather(*(one(*job) for job in jobs))


def cross_tenant_links(admin_engine: Engine) -> int:
    with admin_engine.connect() as conn:
        return conn.execute(text("""
            SELECT (SELECT count(*) FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE c.tenant_id <> m.tenant_id)
                 + (SELECT count(*) FROM messages m JOIN conversations v ON v.id = m.conversation_id
                    WHERE v.tenant_id <> m.tenant_id)
                 + (SELECT count(*) FROM conversations v JOIN contacts c ON c.id = v.contact_id
                    WHERE c.tenant_id <> v.tenant_id)""")).scalar_one()


def settle(tenants: list[Tenant], engine: Engine, timeout: float = 180) -> None:
    wait_for(lambda: all(t.counts(engine)["unprocessed"] == 0 for t in tenants), timeout=timeout, interval=0.5)


def test_corpus_through_two_worker_processes_is_exact_and_idempotent(
    server: str, app_engine: Engine, admin_engine: Engine
) -> None:
    tenants = [Tenant(app_engine, "US", 70, seed=1), Tenant(app_engine, "FI", 70, seed=2),
               Tenant(app_engine, "US", 50, seed=3)]
    assert sum(len(t.corpus.deliveries) for t in tenants) >= 2000
    with worker(processes=2, threads=6, env=WORKER_ENV):
        codes = asyncio.run(post_all(server, tenants))
        assert set(codes) == {200}
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
        time.sleep(1)  # let the second copy of each job finish too
        for tenant in tenants:
            assert tenant.counts(app_engine) == tenant.expected()


def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(
    server: str, app_engine: Engine, redis_client: object
) -> None:
    tenants = [Tenant(app_engine, "US", 60, seed=11)]
    assert set(asyncio.run(post_all(server, tenants))) == {200}  # queued up, no worker yet
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
    with worker(processes=1, threads=2, env={**WORKER_ENV, "INTAKE_WORKER_METRICS_PORT": str(port)}):
        from workers.actors import ingest_events

        ingest_events.send(str(inbox.tenant_id), [str(uuid.uuid4())])
        def scraped() -> bool:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.TransportError:
                return False
            return "dramatiq_messages_total" in body and 'actor_name="ingest_events"' in body
        wait_for(scraped, timeout=30, interval=0.5)
