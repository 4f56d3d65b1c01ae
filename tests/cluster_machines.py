"""Machines that die (`make cluster-test`; minutes; root, for network namespaces): not part of `make test`.

The services machine is this test's own network namespace, with the address 10.231.0.1 on a bridge: the
embedded PostgreSQL behind PgBouncer (transaction mode for the fleet, session mode for the webhook
dispatcher's LISTEN and lock), a Redis primary, its replica and a Sentinel, and the applications' webhook
receiver. Two fleet "machines", each a network namespace plugged into the bridge by a veth pair, run every
role: `intake serve`, the ingest worker, the AI worker and the deliver worker (the last also runs the clock,
one per deployment). They reach the services over TCP only, Redis only through the Sentinel.

In one run, while a provider posts signed deliveries through both machines (what one refuses goes to the
other, as providers retry against a DNS name with two addresses), three faults come one after the other,
each once the fleet has recovered from the one before: machine 1 dies whole, as in a power cut (its link
goes dark, then every process in its namespace is SIGKILLed: the services see no connection close, and
PgBouncer's keepalives and TCP_USER_TIMEOUT drop what the machine held open), the Redis primary is
SIGKILLed (the Sentinel promotes the replica; the fleet follows), and PostgreSQL is stopped and started
again. Then the books: every acknowledged delivery stored exactly once, every stored inbound message
classified exactly once (one classification and one `message.classified` event each, its classification
paid for in `ai_usage`), every change event of each tenant delivered to its endpoint (at least once, a
repeat only under the same webhook-id with the same body), nothing dead-lettered, no delivery given up on.
Figures: deliveries/s acknowledged by each machine, and the time to recover after each fault.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines import audit
from pipelines.crypto import SecretBox
from pipelines.webhooks.endpoints import Endpoints
from pipelines.webhooks.models import EndpointCreate
from tests import corpus as corpus_mod
from tests.fleet import CorpusTenant
from tests.pgbouncer import pgbouncer
from tests.processes import INTAKE, stop, wait_for
from tests.receiver import Receiver, receiver
from tests.sentinel import Topology, redis_with_sentinel
from tests.webhooks import sign

PREFIX = "intake-f"  # namespaces intake-f1, intake-f2; veths intake-f1h (on the bridge) and intake-f1m (inside)
BRIDGE = "intake-fbr"
SERVICES = "10.231.0.1"  # the services machine, as every fleet machine sees it
WEB_PORT = 8000
FLEET_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "100",
             "INTAKE_JOB_MAX_BACKOFF_MS": "2000", "INTAKE_JOB_MAX_RETRIES": "20",
             "INTAKE_DB_PREPARED_STATEMENTS": "false", "INTAKE_WORKER_METRICS_PORT": "0",
             "INTAKE_CLOCK_METRICS_PORT": "0", "INTAKE_RATE_LIMIT_PER_SECOND": "100000",
             "INTAKE_RATE_LIMIT_BURST": "100000", "INTAKE_LOG_LEVEL": "warning",
             # Webhooks to the receiver on the services machine's private address; a killed deliver worker's
             # leases run out after three timeouts and 5 s.
             "INTAKE_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "INTAKE_WEBHOOK_TIMEOUT_SECONDS": "5",
             "INTAKE_WEBHOOK_SWEEP_SECONDS": "1", "INTAKE_WEBHOOK_DISABLE_AFTER": "1h",
             "INTAKE_WEBHOOK_RETRY_SCHEDULE": "500ms,1s,2s,5s,10s,10s,10s,10s,10s,10s",
             # The clock: stored events and unclassified messages whose jobs Redis lost go back on their queues.
             "INTAKE_SWEEP_INTERVAL_SECONDS": "2", "INTAKE_SWEEP_GRACE_SECONDS": "10",
             "INTAKE_AI_SWEEP_GRACE_SECONDS": "15", "INTAKE_AI_SWEEP_HORIZON_SECONDS": "900"}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Machine:
    number: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"{PREFIX}{self.number}"

    @property
    def address(self) -> str:
        return f"10.231.0.{10 + self.number}"

    @property
    def base(self) -> str:
        return f"http://{self.address}:{WEB_PORT}"

    def start(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:  # the child has its own copy of the descriptor
            self.processes.append(subprocess.Popen(["ip", "netns", "exec", self.namespace, *args], env=env,
                                                   stdout=out, stderr=out, start_new_session=True))

    def die(self) -> int:
        """A power cut: the machine's link goes dark first, so nothing it had open is closed with a FIN or an
        RST (the services learn of it only by TCP keepalives), then every process in its namespace is
        SIGKILLed at once; how many."""
        _ip("link", "set", f"{self.namespace}h", "down")
        pids = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True,
                              check=True).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        for proc in self.processes:
            proc.wait(10)
        return len(pids)


@contextmanager
def machines(count: int) -> Iterator[list[Machine]]:
    """`count` network namespaces on one bridge with this one (10.231.0.1/24), each plugged in by a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("machines are network namespaces: this needs root and iproute2's `ip`")
    made: list[Machine] = []
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)  # a run killed before its end
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SERVICES}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for n in range(1, count + 1):
            machine = Machine(n)
            here, there = f"{machine.namespace}h", f"{machine.namespace}m"
            subprocess.run(["ip", "netns", "del", machine.namespace], capture_output=True, check=False)
            _ip("netns", "add", machine.namespace)
            made.append(machine)
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", there, "netns", machine.namespace)
            _ip("link", "set", here, "master", BRIDGE)
            _ip("link", "set", here, "up")
            for args in (("addr", "add", f"{machine.address}/24", "dev", there), ("link", "set", there, "up"),
                         ("link", "set", "lo", "up")):
                _ip("netns", "exec", machine.namespace, "ip", *args)
        yield made
    finally:
        for machine in made:
            for proc in machine.processes:
                stop(proc)
            subprocess.run(["ip", "netns", "del", machine.namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


@dataclass
class Books:
    acks: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, machine) of each 200
    retried: int = 0
    codes: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def acked(self) -> int:
        return len(self.acks)

    def by(self, machine: int, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for at, number in list(self.acks) if number == machine and since <= at < until)


async def post_through(fleet: list[Machine], tenants: list[CorpusTenant], books: Books,
                       concurrency: int = 16, give_up_after: float = 240) -> None:
    """Each delivery to one machine in turn; what fails there goes to the next machine, as providers retry."""
    jobs = [(tenant.inboxes[d.channel], d) for tenant in tenants for d in tenant.corpus.deliveries]
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10) as client:
        async def one(index: int, inbox: Any, d: corpus_mod.Delivery) -> int:
            async with semaphore:
                deadline = time.monotonic() + give_up_after
                attempt = 0
                while True:
                    machine = fleet[(index + attempt) % len(fleet)]  # the dead one is still tried first
                    url = f"{machine.base}/v1/webhooks/{d.channel}/{inbox.id}"
                    headers, body = sign(d.channel, inbox.secrets, url, d.body, d.content_type,
                                         webhook_id=d.webhook_id)
                    try:
                        status = (await client.post(url, content=body, headers=headers)).status_code
                    except httpx.TransportError:
                        status = 599
                    if status == 200:
                        books.acks.append((time.monotonic(), machine.number))
                        return status
                    if time.monotonic() > deadline:
                        return status
                    books.retried += 1
                    attempt += 1
                    await asyncio.sleep(0.2)
        books.codes = list(await asyncio.gather(*(one(i, *job) for i, job in enumerate(jobs))))
    books.done = True


def restart_postgres(refused: Callable[[], bool]) -> None:
    """Stop the embedded PostgreSQL (fast: sessions cut), wait until the fleet has refused a delivery for it,
    and start it again."""
    from pgserver._commands import pg_ctl

    from tests.conftest import TEST_HOME

    user = "pgserver" if os.geteuid() == 0 else None
    pgdata = (TEST_HOME / "postgres").resolve()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    try:
        wait_for(refused, timeout=30, interval=0.05)
    finally:
        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "log"), "start"], pgdata=pgdata,
               user=user, timeout=60)


@dataclass
class Subscribed:
    """A tenant's webhook endpoint (every event type) to the receiver, from its feed's head at creation."""
    tenant: CorpusTenant
    path: str
    after_seq: int

    @classmethod
    def create(cls, engine: Engine, tenant: CorpusTenant, rx: Receiver) -> Subscribed:
        path = f"/t/{tenant.tenant_id}"
        with engine.begin() as conn:
            bind_tenant(conn, tenant.tenant_id)
            shown = Endpoints(SecretBox(os.environ["INTAKE_SECRET_KEY"]), allow_private=True).create(
                conn, tenant.tenant_id, EndpointCreate(url=rx.url + path), audit.Actor("tests"))
            head = int(conn.execute(text("SELECT coalesce(max(seq), 0) FROM change_events")).scalar_one())
        rx.secrets[path] = [shown.secret]
        return cls(tenant, path, head)

    def changes(self, engine: Engine) -> dict[str, str]:
        """The feed's events since the endpoint was made: id -> type."""
        with engine.begin() as conn:
            bind_tenant(conn, self.tenant.tenant_id)
            rows = conn.execute(text("SELECT id, type FROM change_events WHERE seq > :s"), {"s": self.after_seq})
            return {str(row.id): row.type for row in rows}

    def undelivered(self, engine: Engine, rx: Receiver) -> int:
        return len(set(self.changes(engine)) - set(rx.ids(self.path)))


AI_BOOKS = text("""
SELECT (SELECT count(*) FROM messages WHERE direction = 'inbound') AS inbound,
       (SELECT count(*) FROM ai_classifications) AS classifications,
       (SELECT count(DISTINCT message_id) FROM ai_classifications) AS classified,
       (SELECT count(DISTINCT message_id) FROM ai_usage WHERE feature = 'classify') AS paid_for,
       (SELECT count(*) FROM change_events WHERE type = 'message.classified') AS classified_events
""")
# Calls to classify a message beyond its first: every provider call is a usage row (a job repeated after a fault
# may call again; only one classification is stored).
CLASSIFY_CALLS = text("""
SELECT count(*) - count(DISTINCT message_id) FROM ai_usage WHERE feature = 'classify'
""")
# Jobs dead-lettered and deliveries given up on, over the run's tenants: a fault the fleet rides out leaves none.
GIVEN_UP = text("""
SELECT 'job ' || actor || ': ' || exception_type || ': ' || left(exception_message, 200) FROM job_failures
WHERE tenant_id = ANY(CAST(:tenants AS uuid[]))
UNION ALL
SELECT 'delivery of event ' || event_seq || ': ' || coalesce(last_error, '') FROM webhook_attempts
WHERE tenant_id = ANY(CAST(:tenants AS uuid[])) AND status = 'failed'
""")
# Events stored up to a moment and not yet processed, over the run's tenants (the maintenance role reads across).
WAITING_SINCE = text("""
SELECT count(*) FROM inbound_events
WHERE tenant_id = ANY(CAST(:tenants AS uuid[])) AND received_at <= :at AND status <> 'processed'
""")


def ai_books(engine: Engine, tenant: CorpusTenant) -> dict[str, int]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant.tenant_id)
        return dict(conn.execute(AI_BOOKS).one()._asdict())


@dataclass
class Fault:
    name: str
    at: float = 0.0  # monotonic
    acked: int = 0
    answering: float | None = None  # seconds until a delivery was acknowledged again
    recovered: float | None = None  # seconds until every event stored before the fault was processed
    note: str = ""


class Faults:
    """The three faults, each when enough deliveries are acknowledged and the fleet has recovered from the one
    before; run in a thread while the provider posts."""

    def __init__(self, fleet: list[Machine], topology: Topology, books: Books, admin: Engine,
                 tenants: list[CorpusTenant], total: int) -> None:
        self.fleet, self.topology, self.books, self.admin = fleet, topology, books, admin
        self.tenant_ids = [str(t.tenant_id) for t in tenants]
        self.total = total
        self.done: list[Fault] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._one("machine 1 dies", 0.2, self._kill_machine)
            self._one("Redis fails over", 0.45, self._fail_redis_over)
            self._one("PostgreSQL restarts", 0.7, self._restart_postgres)
        except BaseException as exc:
            self.error = exc

    def _one(self, name: str, share: float, act: Callable[[Fault], None]) -> None:
        wait_for(lambda: self.books.acked >= self.total * share or self.books.done, timeout=300, interval=0.01)
        assert not self.books.done, f"the corpus was posted before {name!r}: no delivery was in flight"
        fault = Fault(name, time.monotonic(), self.books.acked)
        stamp = datetime.now(UTC)
        act(fault)
        self.done.append(fault)
        wait_for(lambda: self._acked_since(fault.at) or self.books.done, timeout=120, interval=0.05)
        answered = [at for at, _ in list(self.books.acks) if at > fault.at]
        fault.answering = (answered[0] - fault.at) if answered else None
        wait_for(lambda: self._waiting(stamp) == 0, timeout=240, interval=0.5)
        fault.recovered = time.monotonic() - fault.at

    def _acked_since(self, at: float) -> bool:
        return any(t > at for t, _ in self.books.acks[-50:])

    def _waiting(self, at: datetime) -> int:
        try:
            with self.admin.begin() as conn:
                return int(conn.execute(WAITING_SINCE, {"tenants": self.tenant_ids, "at": at}).scalar_one())
        except Exception:
            return -1

    def _kill_machine(self, fault: Fault) -> None:
        fault.note = f"{self.fleet[0].die()} processes killed"

    def _fail_redis_over(self, fault: Fault) -> None:
        self.topology.kill(self.topology.primary)
        wait_for(lambda: self.topology.primary_port() == self.topology.replica, timeout=60, interval=0.05)
        fault.note = f"the Sentinel promoted the replica after {time.monotonic() - fault.at:.1f} s"

    def _restart_postgres(self, fault: Fault) -> None:
        refused = self.books.retried
        restart_postgres(lambda: self.books.retried > refused)
        fault.note = f"down {time.monotonic() - fault.at:.1f} s"


def start_fleet(fleet: list[Machine], env: dict[str, str], logs: Path, clock_env: dict[str, str]) -> None:
    """Every role on every machine; the clock on the last, which no fault kills."""
    for machine in fleet:
        def log(role: str, m: Machine = machine) -> Path:
            return logs / f"m{m.number}-{role}.log"

        machine.start([INTAKE, "serve", "--host", "0.0.0.0", "--port", str(WEB_PORT)], env, log("web"))  # noqa: S104
        machine.start([INTAKE, "worker", "--processes", "1", "--threads", "4", "--queues", "ingest",
                       "--queues", "maintenance"], env, log("worker"))
        machine.start([INTAKE, "worker", "--processes", "1", "--threads", "2", "--queues", "ai"], env, log("ai"))
        machine.start([INTAKE, "worker", "--processes", "1", "--threads", "8", "--queues", "deliver"], env,
                      log("deliver"))
    fleet[-1].start([INTAKE, "clock"], {**env, **clock_env}, logs / f"m{fleet[-1].number}-clock.log")

    def up(machine: Machine) -> bool:
        try:
            return httpx.get(machine.base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    for machine in fleet:
        wait_for(lambda m=machine: up(m), timeout=120, interval=0.2)  # type: ignore[misc]


def test_machines_die_redis_fails_over_postgres_restarts_and_the_books_balance(
        stack: dict[str, str], app_engine: Engine, admin_engine: Engine, tmp_path: Path) -> None:
    with ExitStack() as stack_, machines(2) as fleet:
        bouncer = stack_.enter_context(pgbouncer(stack["DATABASE_URL"], Path(stack["INTAKE_HOME"]) / "cluster-pgb",
                                                 ("intake_app", "postgres"), listen="0.0.0.0", pool_size=8))  # noqa: S104
        topology = stack_.enter_context(redis_with_sentinel(tmp_path / "redis", host=SERVICES))
        rx = stack_.enter_context(receiver(host=SERVICES))
        pooled = f"{SERVICES}:{bouncer.port}"
        env = {**os.environ, **FLEET_ENV, **topology.env(),
               "DATABASE_URL": f"postgresql://intake_app@{pooled}/intake",
               "INTAKE_LISTEN_DATABASE_URL": f"postgresql://intake_app@{pooled}/intake_session"}
        env.pop("INTAKE_ADMIN_DATABASE_URL", None)
        start_fleet(fleet, env, tmp_path, {"INTAKE_ADMIN_DATABASE_URL": f"postgresql://postgres@{pooled}/intake"})

        tenants = [CorpusTenant(app_engine, region, 40, seed=501 + n) for n, region in enumerate(("US", "FI", "US"))]
        subscribed = [Subscribed.create(app_engine, tenant, rx) for tenant in tenants]
        total = sum(len(t.corpus.deliveries) for t in tenants)
        books = Books()
        faults = Faults(fleet, topology, books, admin_engine, tenants, total)
        started = time.monotonic()
        faults.thread.start()
        asyncio.run(post_through(fleet, tenants, books))
        posted = time.monotonic()
        faults.thread.join(600)
        assert faults.error is None, repr(faults.error)
        assert [f.name for f in faults.done] == ["machine 1 dies", "Redis fails over", "PostgreSQL restarts"]
        assert set(books.codes) == {200}

        def settled() -> bool:
            return all(t.counts(app_engine)["unprocessed"] == 0 for t in tenants) and all(
                ai_books(app_engine, t)["classified"] == ai_books(app_engine, t)["inbound"] for t in tenants) and all(
                s.undelivered(app_engine, rx) == 0 for s in subscribed)

        try:
            wait_for(settled, timeout=300, interval=1)
        except AssertionError:
            left = {str(s.tenant.tenant_id): {**s.tenant.counts(app_engine), **ai_books(app_engine, s.tenant),
                                              "undelivered": s.undelivered(app_engine, rx)} for s in subscribed}
            raise AssertionError(f"not settled 300 s after the posting ended: {left}") from None
        balanced = time.monotonic()

        # The books. Every acknowledged delivery stored exactly once.
        for tenant in tenants:
            assert tenant.counts(app_engine) == tenant.expected()
            assert tenant.report(app_engine, sent=0)["duplicates"] == 0
        # Every stored inbound message classified exactly once and announced once, its classification paid for.
        classified_again = 0
        for tenant in tenants:
            ai = ai_books(app_engine, tenant)
            assert ai["inbound"] > 0
            assert ai == {key: ai["inbound"] for key in ai}, ai
            with app_engine.begin() as conn:
                bind_tenant(conn, tenant.tenant_id)
                classified_again += int(conn.execute(CLASSIFY_CALLS).scalar_one())
        # Every change delivered: each event of the feed at least once under its id, signed; a repeat carries
        # the same webhook-id and the same body; nothing arrives that the feed does not hold.
        with admin_engine.begin() as conn:
            given_up = list(conn.execute(GIVEN_UP, {"tenants": faults.tenant_ids}).scalars())
        assert given_up == []
        delivered, repeated_at = 0, []
        for sub in subscribed:
            feed = sub.changes(app_engine)
            got = rx.on(sub.path)
            assert all(r.verified_by for r in got)
            assert {r.webhook_id for r in got} == set(feed)
            bodies: dict[str, bytes] = {}
            for r in got:
                if r.webhook_id in bodies:
                    repeated_at.append(r.at)
                assert bodies.setdefault(r.webhook_id, r.body) == r.body
                assert r.json["type"] == feed[r.webhook_id]
            delivered += len(feed)

    kill = faults.done[0]
    print(f"\n{total} deliveries of {len(tenants)} tenants posted in {posted - started:.1f} s, "
          f"{books.retried} retried against the other machine; every book balanced "
          f"{balanced - posted:.1f} s after the last; {delivered} change events delivered, "
          f"{len(repeated_at)} of them again under the same webhook-id; {classified_again} messages sent to "
          f"the classifier again by a repeated job (one classification stored each)")
    edges = [started] + [f.at for f in faults.done] + [float("inf")]
    phases = ["before any fault"] + [f"after {f.name}" for f in faults.done]
    print("repeated deliveries: " + ", ".join(
        f"{sum(1 for at in repeated_at if low <= at < high)} {phase}"
        for phase, low, high in zip(phases, edges, edges[1:], strict=False)))
    print("deliveries/s acknowledged before machine 1 died: " + ", ".join(
        f"machine {m.number} {books.by(m.number, until=kill.at) / (kill.at - started):.1f}" for m in fleet)
        + f"; machine 2 alone afterwards: {books.by(2, since=kill.at) / (posted - kill.at):.1f}")
    for fault in faults.done:
        answering = "n/a" if fault.answering is None else f"{fault.answering:.1f} s"
        print(f"{fault.name} after {fault.acked} acknowledged ({fault.note}): acknowledging again after "
              f"{answering}, every event stored before it processed after {fault.recovered:.1f} s")
