"""The webhook dispatcher: wakes the `deliver` queue when a tenant's feed moves, and sweeps for due work.

Each process that consumes `deliver` runs one dispatcher thread; a PostgreSQL advisory lock on its own
connection lets one of them lead (the others wait to take over when it dies). The leader LISTENs on
`intake_changes` (`<tenant>:<seq>`, sent at each commit that records changes): the tenant's enabled
endpoints get a wake-up job at once. Every INTAKE_WEBHOOK_SWEEP_SECONDS it also asks `intake_webhook_due`
which endpoints have events past their cursor or deliveries due (retries, leases run out by a killed worker,
notifications missed while no dispatcher ran, jobs Redis lost), and wakes those.

A wake-up waiting in the queue is marked in Redis (`intake:webhooks:wake:<endpoint>`, 30 s at most), so a
burst of changes sends one job per endpoint, not one per change. Jobs only wake: the state is in PostgreSQL,
so a Redis restart or a lost job delays a delivery by one sweep and loses nothing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import psycopg
import structlog
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from db.tenancy import TenantId, bind_tenant
from pipelines.webhooks.delivery import due, endpoints_of
from workers.queues import DELIVER_ACTOR, DELIVER_QUEUE, enqueue, wake_key

log = structlog.get_logger("intake.webhooks")

LEADER_LOCK = 7_311_115_920_474_113  # pg_advisory_lock key of the one dispatcher that leads
WAKE_TTL_MS = 30_000
BURST_SECONDS = 0.005  # notifications arriving within this of each other are handled together

Wake = Callable[[TenantId, uuid.UUID], None]


class Dispatcher:
    def __init__(self, engine: Engine, wake: Wake, *, sweep_seconds: float, listen_url: str | None = None) -> None:
        self.engine = engine
        # LISTEN and the session lock need a session of their own: INTAKE_LISTEN_DATABASE_URL where DATABASE_URL
        # goes through PgBouncer in transaction mode.
        self.listen_url = listen_url
        self.wake = wake
        self.sweep_seconds = sweep_seconds
        self.stop = threading.Event()
        self.leading = False

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._lead()
            except Exception as exc:  # PostgreSQL or Redis away: try again after a pause
                log.warning("webhooks.dispatcher.failed", error=repr(exc))
            self.leading = False
            self.stop.wait(min(self.sweep_seconds, 1.0))

    def _lead(self) -> None:
        source = make_url(self.listen_url) if self.listen_url else self.engine.url
        url = source.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True, application_name="intake-webhook-dispatcher") as conn:
            while not self.stop.is_set():
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
                if row is not None and row[0]:
                    break
                self.stop.wait(self.sweep_seconds)
            if self.stop.is_set():
                return
            self.leading = True
            conn.execute("LISTEN intake_changes")
            next_sweep = 0.0
            while not self.stop.is_set():
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.sweep_seconds
                tenants = self._notified(conn, timeout=min(0.5, max(0.0, next_sweep - time.monotonic())))
                for tenant in tenants:
                    with self.engine.begin() as tx:
                        bind_tenant(tx, tenant)
                        endpoints = endpoints_of(tx, tenant)
                    for endpoint in endpoints:
                        self.wake(tenant, endpoint)

    @staticmethod
    def _notified(conn: psycopg.Connection[Any], timeout: float) -> set[TenantId]:
        tenants: set[TenantId] = set()
        for wait in (timeout, BURST_SECONDS):
            for note in conn.notifies(timeout=wait, stop_after=1000 if tenants else 1):
                try:
                    tenants.add(TenantId(uuid.UUID(note.payload.split(":", 1)[0])))
                except ValueError:
                    continue
            if not tenants:
                break
        return tenants

    def sweep(self) -> None:
        with self.engine.begin() as conn:
            found = due(conn)
        for tenant, endpoint in found:
            self.wake(tenant, endpoint)


class WebhookDispatch(dramatiq.Middleware):
    """Runs the dispatcher in a worker process that consumes `deliver`."""

    def __init__(self, engine: Callable[[], Engine], sweep_seconds: float, listen_url: str | None = None) -> None:
        self.engine = engine
        self.sweep_seconds = sweep_seconds
        self.listen_url = listen_url
        self.dispatcher: Dispatcher | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        queues = worker.consumer_whitelist
        if queues and DELIVER_QUEUE not in queues:
            return
        client = broker.client  # type: ignore[attr-defined]

        def wake(tenant: TenantId, endpoint: uuid.UUID) -> None:  # sent by name, as the web sends ingest jobs
            if client.set(wake_key(str(endpoint)), b"1", nx=True, px=WAKE_TTL_MS):
                enqueue(client, DELIVER_QUEUE, DELIVER_ACTOR, [(str(tenant), str(endpoint))])

        self.dispatcher = Dispatcher(self.engine(), wake, sweep_seconds=self.sweep_seconds, listen_url=self.listen_url)
        threading.Thread(target=self.dispatcher.run, name="webhook-dispatcher", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop.set()
