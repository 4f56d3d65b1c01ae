"""`intake bench --outbound`: replies through the `outbound` queue to a local fake provider.

A local server in this process answers as Twilio's Messages API does (201 with a sid) and notes when each
reply's request arrives. Queued replies are stored as the conversation API stores them, one `send_message`
job each, and an `intake worker --queues outbound` command sends them:

  1. burst: every reply queued while the backlog is held, then released to the booted workers; replies per
     second from the release to the last request received;
  2. paced: replies enqueued one by one at half that rate, each timed from its enqueue to the provider
     receiving its request (p50/p99): the time a reply takes from the API's 201 to the provider when the
     queue keeps up;
  3. the books: replies marked sent, requests the provider received, duplicates, lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import dramatiq
import orjson
from sqlalchemy import Engine, text

from db.engine import make_engine
from db.tenancy import TenantId, bind_tenant
from pipelines.crypto import SecretBox
from pipelines.inboxes import create_inbox, create_tenant
from workers.bench.stack import Stack, open_stack

Progress = Callable[[str, float | None], None]
ACCOUNT_SID = "AC" + "0" * 32
CUSTOMER, OUR_NUMBER = "+14155550101", "+15557654321"


@dataclass(frozen=True)
class OutboundOptions:
    replies: int = 2000
    paced: int = 200
    tenants: int = 4
    processes: int = 2
    threads: int = 8
    database_url: str | None = None
    admin_database_url: str | None = None
    redis_url: str | None = None


class FakeTwilio:
    """Arrival times of the requests, by the reply id each Body carries."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.lock = threading.Lock()

    def record(self, body: bytes) -> None:
        now = time.time()
        reply = dict(parse_qsl(body.decode())).get("Body", "")
        with self.lock:
            self.requests += 1
            self.arrivals.setdefault(reply, now)


@contextmanager
def fake_twilio() -> Iterator[tuple[str, FakeTwilio]]:
    fake = FakeTwilio()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            fake.record(body)
            raw = orjson.dumps({"sid": "SM" + uuid.uuid4().hex, "status": "queued"})
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()


def run_outbound(options: OutboundOptions, progress: Progress) -> dict[str, Any]:
    with fake_twilio() as (base, fake), open_stack(options.database_url, options.admin_database_url,
                                                  options.redis_url) as stack:
        stack.env["INTAKE_TWILIO_API_BASE"] = base
        engine = make_engine(stack.app_url, prepared_statements=True, pool_size=2, application_name="intake-bench")
        try:
            progress("outbound: queueing replies", None)
            threads = _threads(engine, stack, options.tenants)
            burst = [_queue(engine, threads[i % len(threads)], f"burst {i}") for i in range(options.replies)]
            broker = dramatiq.get_broker()
            with stack.workers("worker_outbound", "outbound", commands=1, processes=options.processes,
                               threads=options.threads, hold=True) as release:
                for tenant, reply in burst:
                    _enqueue(broker, tenant, reply)
                progress("outbound: burst", None)
                started = time.time()
                release()
                _wait(fake, options.replies, progress, "outbound: burst")
                elapsed = max(fake.arrivals.values()) - started
                rate = options.replies / elapsed if elapsed > 0 else 0.0
                paced = [_queue(engine, threads[i % len(threads)], f"paced {i}") for i in range(options.paced)]
                progress("outbound: paced", None)
                interval = 2.0 / rate if rate > 0 else 0.01
                enqueued: dict[str, float] = {}
                for n, (tenant, reply) in enumerate(paced):
                    time.sleep(max(0.0, started + elapsed + 0.5 + n * interval - time.time()))
                    enqueued[f"paced {n}"] = time.time()
                    _enqueue(broker, tenant, reply)
                _wait(fake, options.replies + options.paced, progress, "outbound: paced")
            latencies = sorted((fake.arrivals[k] - t) * 1000 for k, t in enqueued.items())
            books = _books(engine, threads, options.replies + options.paced)
        finally:
            engine.dispose()
    total = options.replies + options.paced
    return {
        "replies": options.replies, "processes": options.processes, "threads": options.threads,
        "replies_per_s": round(rate, 1),
        "paced_rate_per_s": round(rate / 2, 1), "paced_replies": options.paced,
        "enqueue_to_provider_p50_ms": round(_pct(latencies, 50), 2),
        "enqueue_to_provider_p99_ms": round(_pct(latencies, 99), 2),
        "sent": books, "provider_requests": fake.requests, "duplicates": fake.requests - len(fake.arrivals),
        "lost": total - len(fake.arrivals),
    }


def _threads(engine: Engine, stack: Stack, count: int) -> list[dict[str, Any]]:
    """Tenants with a Twilio inbox that can send, each with one customer who wrote to it."""
    box = SecretBox(stack.secret_key)
    threads = []
    for n in range(count):
        with engine.begin() as conn:
            tenant = create_tenant(conn, f"Outbound bench {n}")
            inbox = create_inbox(conn, box, tenant, "twilio", given_secrets={
                "auth_token": "bench-twilio", "account_sid": ACCOUNT_SID})
            bind_tenant(conn, tenant)
            contact = conn.execute(text("INSERT INTO contacts (tenant_id, display_name) VALUES (:t, 'Customer') "
                                        "RETURNING id"), {"t": tenant}).scalar_one()
            conn.execute(text("INSERT INTO contact_identities (tenant_id, contact_id, kind, value) "
                              "VALUES (:t, :c, 'phone', :p)"), {"t": tenant, "c": contact, "p": CUSTOMER})
            conversation = conn.execute(text("INSERT INTO conversations (tenant_id, inbox_id, contact_id) "
                                             "VALUES (:t, :i, :c) RETURNING id"),
                                        {"t": tenant, "i": inbox.id, "c": contact}).scalar_one()
            conn.execute(text("""
                INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, direction, external_id,
                                      content, metadata, status, sent_at)
                VALUES (:t, :i, :c, :p, 'inbound', :x, 'Where is my order?', CAST(:m AS jsonb), 'received', now())"""),
                {"t": tenant, "i": inbox.id, "c": conversation, "p": contact, "x": "SM" + uuid.uuid4().hex,
                 "m": orjson.dumps({"recipients": [OUR_NUMBER]}).decode()})
            threads.append({"tenant": tenant, "inbox": inbox.id, "conversation": conversation, "contact": contact})
    return threads


def _queue(engine: Engine, thread: dict[str, Any], content: str) -> tuple[TenantId, uuid.UUID]:
    """A reply stored as the conversation API stores one with `send: true`."""
    reply = uuid.uuid4()
    with engine.begin() as conn:
        bind_tenant(conn, thread["tenant"])
        conn.execute(text("""
            INSERT INTO messages (id, tenant_id, inbox_id, conversation_id, contact_id, direction, external_id,
                                  content, status, sent_at)
            VALUES (:id, :t, :i, :c, :p, 'outbound', 'intake:' || CAST(:id AS text), :content, 'queued', now())"""),
            {"id": reply, "t": thread["tenant"], "i": thread["inbox"], "c": thread["conversation"],
             "p": thread["contact"], "content": content})
    return thread["tenant"], reply


def _enqueue(broker: dramatiq.Broker, tenant: TenantId, reply: uuid.UUID) -> None:
    broker.enqueue(dramatiq.Message(queue_name="outbound", actor_name="send_message",
                                    args=(str(tenant), str(reply)), kwargs={}, options={}))


def _wait(fake: FakeTwilio, count: int, progress: Progress, phase: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.arrivals) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{phase}: the provider received {len(fake.arrivals)} of {count} replies")
        progress(phase, len(fake.arrivals) / count)
        time.sleep(0.05)


def _books(engine: Engine, threads: list[dict[str, Any]], total: int, timeout: float = 30) -> int:
    """Replies marked sent, once the workers have committed what the provider answered (or the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        sent = 0
        for thread in threads:
            with engine.begin() as conn:
                bind_tenant(conn, thread["tenant"])
                sent += conn.execute(text("SELECT count(*) FROM messages WHERE direction = 'outbound' "
                                          "AND status = 'sent'")).scalar_one()
        if sent >= total or time.monotonic() > deadline:
            return sent
        time.sleep(0.1)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]
