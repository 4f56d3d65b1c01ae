"""Drive the running fleet with a corpus and count what it stored."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox, create_inbox
from tests import corpus as corpus_mod
from tests.factories import new_inbox
from tests.processes import wait_for
from tests.webhooks import sign


class CorpusTenant:
    """A tenant with one inbox per corpus channel, and the corpus its customers will send."""

    def __init__(self, engine: Engine, region: str, count: int, seed: int) -> None:
        first = new_inbox(engine, "twilio", settings={"default_region": region}, tenant_name=f"Corpus {region}")
        self.tenant_id = first.tenant_id
        self.inboxes: dict[str, CreatedInbox] = {"twilio": first}
        with engine.begin() as conn:
            bind_tenant(conn, first.tenant_id)
            for channel in ("whatsapp", "postmark", "api"):
                given = {"app_secret": "meta-app-secret"} if channel == "whatsapp" else None
                self.inboxes[channel] = create_inbox(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]),
                                                     first.tenant_id, channel, given_secrets=given,
                                                     settings={"default_region": region})
        self.corpus = corpus_mod.build(region, count, seed)

    def counts(self, engine: Engine) -> dict[str, int]:
        with engine.begin() as conn:
            bind_tenant(conn, self.tenant_id)

            def one(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar_one())

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

    def report(self, engine: Engine, sent: int) -> dict[str, int]:
        """events sent, events stored, messages stored, duplicates, lost."""
        with engine.begin() as conn:
            bind_tenant(conn, self.tenant_id)
            events = int(conn.execute(text("SELECT count(*) FROM inbound_events")).scalar_one())
            stored, distinct = conn.execute(text("SELECT count(*), count(DISTINCT (inbox_id, external_id)) "
                                                 "FROM messages")).one()
        return {"events_sent": sent, "events_stored": events, "messages_stored": int(stored),
                "duplicates": int(stored) - int(distinct), "lost": self.corpus.messages - int(distinct)}


@dataclass
class PostResult:
    codes: list[int] = field(default_factory=list)
    retries: int = 0
    transport_errors: list[str] = field(default_factory=list)  # what a 599 stands for


async def post_all(base: str, tenants: list[CorpusTenant], *, concurrency: int = 32,
                   retry_unavailable: bool = False, result: PostResult | None = None) -> PostResult:
    """Post every delivery; with `retry_unavailable`, retry 503s and refused connections as providers do.
    The figures go into `result` when given, so another thread can watch them while the posting runs."""
    jobs = []
    for tenant in tenants:
        for d in tenant.corpus.deliveries:
            inbox = tenant.inboxes[d.channel]
            url = f"{base}/v1/webhooks/{d.channel}/{inbox.id}"
            jobs.append((inbox, d, url))
    result = PostResult() if result is None else result
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(inbox: CreatedInbox, d: corpus_mod.Delivery, url: str) -> int:
            async with semaphore:
                for _ in range(200):
                    # Signed afresh on each attempt, as a provider's retry carries a new timestamp.
                    headers, body = sign(d.channel, inbox.secrets, url, d.body, d.content_type,
                                         webhook_id=d.webhook_id)
                    try:
                        status = (await client.post(url, content=body, headers=headers)).status_code
                    except httpx.TransportError as exc:
                        status = 599
                        result.transport_errors.append(repr(exc))
                    if not retry_unavailable or status not in (503, 599):
                        return status
                    result.retries += 1
                    await asyncio.sleep(0.25)  # the provider's back-off before its retry
                return status
        result.codes = list(await asyncio.gather(*(one(*job) for job in jobs)))
    return result


def settle(tenants: list[CorpusTenant], engine: Engine, timeout: float = 180) -> None:
    wait_for(lambda: all(t.counts(engine)["unprocessed"] == 0 for t in tenants), timeout=timeout, interval=0.5)
