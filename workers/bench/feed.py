"""The change feed pushed: webhook deliveries to a local receiver, their rate, latency and CPU.

  throughput  events recorded straight into the feed (across tenants and conversations) while each tenant's
              endpoint is disabled; the `deliver` workers are booted, the endpoints enabled at once, and the
              receiver counts: events delivered per second from then to the last one, and CPU milliseconds
              per delivered event for each process tree (the receiver is not counted).
              The endpoints are disabled again at the end, so the next phase's deliveries go to its receiver only.
  latency     deliveries posted to the ingress at `rate` with the ingest and deliver workers running: from the
              ingress's acknowledgement of a message's delivery (the load generator's wall clock when the 2xx's
              last byte arrived) to the receiver getting its `message.received` (the same process's clock), p50
              and p99.

The receiver verifies nothing (the tests do); it answers 200 and notes when each delivery arrived.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import psycopg
from sqlalchemy import update

from db.engine import make_engine
from db.schema import webhook_endpoints
from db.tenancy import TenantId, bind_tenant
from pipelines import audit, changes
from pipelines.crypto import SecretBox
from pipelines.webhooks.endpoints import Endpoints
from pipelines.webhooks.models import EndpointCreate
from workers.bench.options import cores, per_item
from workers.bench.procs import wait
from workers.bench.stack import Stack

Progress = Callable[[str, float | None], None]
CONVERSATIONS = 200  # per tenant: enough for deliveries to run in parallel, few enough to keep order busy


class Receiver:
    """A local HTTP receiver: when each delivery arrived, by its webhook-id, and the body of message.received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: dict[str, float] = {}
        self.messages: dict[str, float] = {}  # message id -> arrival (wall clock) of its message.received
        self.url = ""

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.arrived)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: with the default 5, parallel connects wait for a SYN retry


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            now = time.time()
            with state.lock:
                state.arrived.setdefault(self.headers.get("webhook-id", ""), now)
            if b'"message.received"' in body[:40]:
                message = orjson.loads(body).get("data", {}).get("message", {}).get("id")
                if message:
                    with state.lock:
                        state.messages.setdefault(str(message), now)
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/feed"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def endpoints_for(stack: Stack, tenants: list[TenantId], url: str, *, enabled: bool) -> list[uuid.UUID]:
    engine = make_engine(stack.app_url, prepared_statements=True, pool_size=1, application_name="intake-bench")
    tools = Endpoints(SecretBox(stack.secret_key), allow_private=True)
    made = []
    try:
        for tenant in tenants:
            with engine.begin() as conn:
                bind_tenant(conn, tenant)
                endpoint = tools.create(conn, tenant, EndpointCreate(url=url), audit.Actor("bench")).endpoint.id
                if not enabled:
                    conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint)
                                 .values(enabled=False))
            made.append(endpoint)
    finally:
        engine.dispose()
    return made


def record_events(stack: Stack, tenants: list[TenantId], count: int, *, chunk: int = 500, seed: int = 7) -> None:
    """`count` events spread over the tenants and their conversations, `chunk` per transaction."""
    rng = random.Random(seed)
    conversations = {t: [uuid.UUID(int=rng.getrandbits(128)) for _ in range(CONVERSATIONS)] for t in tenants}
    engine = make_engine(stack.app_url, prepared_statements=True, pool_size=1, application_name="intake-bench")
    try:
        for start in range(0, count, chunk):
            tenant = tenants[(start // chunk) % len(tenants)]
            batch = []
            for n in range(start, min(count, start + chunk)):
                conversation = rng.choice(conversations[tenant])
                batch.append(changes.Change("conversation.assigned", {"conversation": {
                    "id": str(conversation), "assignee": f"agent-{n % 17}"}}, conversation_id=conversation))
            with engine.begin() as conn:
                bind_tenant(conn, tenant)
                changes.record(conn, tenant, batch)
    finally:
        engine.dispose()


def throughput(stack: Stack, conn: psycopg.Connection[Any], tenants: list[TenantId], events: int, *,
               processes: int, threads: int, progress: Progress, timeout: float = 600) -> dict[str, Any]:
    """Events delivered per second to a local receiver, and their CPU, from a backlog in the feed."""

    stack.env["INTAKE_WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = "true"  # the receiver is on this machine
    with receiver() as rx:
        endpoints = endpoints_for(stack, tenants, rx.url, enabled=False)
        progress("feed: recording events", None)
        record_events(stack, tenants, events)
        with stack.workers("deliver", "deliver", commands=1, processes=processes, threads=threads):
            with stack.watchers.cpu.phase() as spent:
                conn.execute("UPDATE webhook_endpoints SET enabled = true WHERE id = ANY(%s)", (endpoints,))
                for tenant in tenants:  # wake the dispatcher now rather than at its next sweep
                    conn.execute("SELECT pg_notify('intake_changes', %s)", (f"{tenant}:0",))
                started = time.time()

                def done() -> bool:
                    progress("feed: delivering the backlog", rx.count / events)
                    return rx.count >= events

                wait(done, timeout=timeout, interval=0.1)
            seconds = max(rx.arrived.values()) - started
            conn.execute("UPDATE webhook_endpoints SET enabled = false WHERE id = ANY(%s)", (endpoints,))
    per_event = per_item(spent, events)
    return {"events": events, "delivered": rx.count, "seconds": round(seconds, 2),
            "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
            "cpu_ms_per_event": per_event,
            "cpu_ms_per_event_total": round(sum(v or 0.0 for v in per_event.values()), 4),
            "cores": cores(spent)}


def latency(stack: Stack, conn: psycopg.Connection[Any], tenants: list[TenantId],
            send: Callable[[], dict[str, float]], *, processes: int, threads: int, progress: Progress,
            timeout: float = 60) -> dict[str, Any]:
    """The ingress's acknowledgement to the receiver getting `message.received`, for the deliveries `send`
    posts (it returns, per message key `inbox:external_id`, the wall clock of the first 2xx that acknowledged
    it), with the deliver workers running."""
    stack.env["INTAKE_WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = "true"
    with receiver() as rx:
        endpoints_for(stack, tenants, rx.url, enabled=True)
        with stack.workers("deliver", "deliver", commands=1, processes=processes, threads=threads):
            mark = datetime.now(UTC)
            progress("feed: paced deliveries through the ingress", None)
            acked = send()
            try:
                wait(lambda: len(rx.messages) >= len(acked), timeout=timeout, interval=0.1)
            except RuntimeError:
                pass  # reported as what arrived (an ingest that records no message.received: nothing)
        rows = conn.execute("SELECT id, inbox_id, external_id, extract(epoch FROM stored_at) FROM messages "
                            "WHERE received_at >= %s", (mark,)).fetchall()
    received = {str(r[0]): acked[f"{r[1]}:{r[2]}"] for r in rows if f"{r[1]}:{r[2]}" in acked}
    stored = {str(r[0]): float(r[3]) for r in rows if r[3] is not None}
    gaps = sorted((rx.messages[m] - at) * 1000 for m, at in received.items() if m in rx.messages)
    # The two parts of the way: the ingest (acknowledged to stored, with its event) and the feed (stored to the
    # receiver). The database's clock and this process's are the same machine's.
    feed_gaps = sorted((rx.messages[m] - stored[m]) * 1000 for m in received if m in rx.messages and m in stored)
    if not gaps:
        return {"messages": len(received), "delivered": 0, "p50_ms": None, "p99_ms": None}
    return {"messages": len(received), "delivered": len(gaps), "p50_ms": percentile(gaps, 50),
            "p99_ms": percentile(gaps, 99), "stored_to_receiver_p50_ms": percentile(feed_gaps, 50),
            "stored_to_receiver_p99_ms": percentile(feed_gaps, 99)}


def percentile(ordered: list[float], p: int) -> float | None:
    return round(ordered[min(len(ordered) - 1, len(ordered) * p // 100)], 2) if ordered else None
