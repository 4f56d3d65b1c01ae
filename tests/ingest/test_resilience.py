"""Nothing acknowledged is lost, nothing is stored twice: workers killed, Redis wiped, PostgreSQL restarted.

Each scenario drives a corpus over real HTTP while the fault happens, then checks the books: events sent,
events stored, messages stored, duplicates, lost. The figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import redis
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from tests.fleet import CorpusTenant, PostResult, post_all, settle
from tests.processes import run_intake, wait_for, worker
from workers.embedded.services import EmbeddedServices

# The workers run as the Procfile's `worker` does, on the ingest queue alone: these tests keep the books of
# storage, and AI jobs other tests left in the queue would otherwise share the threads (the AI's own
# recovery is `test_ai_jobs_lost_with_redis_are_swept_once`).
INGEST = ("ingest",)
WORKER_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "200",
              "INTAKE_JOB_MAX_BACKOFF_MS": "2000", "INTAKE_JOB_MAX_RETRIES": "20"}


class Background:
    """Post a corpus from another thread while the test breaks things; `result` fills in as it goes."""

    def __init__(self, base: str, tenants: list[CorpusTenant], concurrency: int = 8) -> None:
        self.result = PostResult()
        self._thread = threading.Thread(target=self._run, args=(base, tenants, concurrency), daemon=True)
        self._thread.start()

    def _run(self, base: str, tenants: list[CorpusTenant], concurrency: int) -> None:
        asyncio.run(post_all(base, tenants, concurrency=concurrency, retry_unavailable=True, result=self.result))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 240) -> PostResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "posting did not finish"
        return self.result


def sweep(env: dict[str, str] | None = None) -> dict[str, object]:
    """`intake clock --once` with no grace (in this process: `drain` runs it every two seconds)."""
    env = dict(os.environ, INTAKE_SWEEP_GRACE_SECONDS="0", **(env or {}))
    result = run_intake("clock", "--once", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def drain(tenant: CorpusTenant, engine: Engine, log: Path | None = None, timeout: float = 120) -> None:
    """Sweep until every event of `tenant` is processed; if not in time, fail naming what is left and why
    (and the worker's last warnings, from `log`)."""

    def drained() -> bool:
        sweep()  # re-enqueue what Redis lost or never got
        return tenant.counts(engine)["unprocessed"] == 0

    try:
        wait_for(drained, timeout=timeout, interval=2)
    except AssertionError:
        with engine.begin() as conn:
            bind_tenant(conn, tenant.tenant_id)
            left = conn.execute(text(
                "SELECT status, attempts, error, count(*) AS n FROM inbound_events WHERE status <> 'processed' "
                "GROUP BY 1, 2, 3 ORDER BY n DESC LIMIT 10")).all()
        warnings = [line for line in (log.read_text(errors="replace").splitlines() if log else [])
                    if '"warning"' in line or '"error"' in line or "Traceback" in line][-15:]
        raise AssertionError(f"events left unprocessed: {[tuple(row) for row in left]}; the worker's last "
                             f"warnings: {warnings}") from None


def events_stored(tenant: CorpusTenant, engine: Engine) -> int:
    return tenant.report(engine, sent=0)["events_stored"]


def books(name: str, tenant: CorpusTenant, engine: Engine, posted: PostResult) -> dict[str, int]:
    figures = tenant.report(engine, sent=len(posted.codes))
    print(f"\n[{name}] " + json.dumps({**figures, "provider_retries": posted.retries}))
    return figures


def test_worker_killed_repeatedly_while_events_flow(server: str, app_engine: Engine) -> None:
    tenant = CorpusTenant(app_engine, "US", 200, seed=21)
    assert len(tenant.corpus.deliveries) >= 2000  # "a few thousand"
    posting = Background(server, [tenant])

    def kill_a_worker_mid_work() -> None:
        before = tenant.counts(app_engine)["messages"]
        with worker(processes=1, threads=4, env=WORKER_ENV, queues=INGEST) as proc:
            wait_for(lambda: tenant.counts(app_engine)["messages"] >= before + 50, timeout=60, interval=0.1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    for _ in range(3):
        kill_a_worker_mid_work()
    posted = posting.join()
    assert set(posted.codes) == {200}
    with worker(processes=2, threads=4, env=WORKER_ENV, queues=INGEST):
        settle([tenant], app_engine, timeout=120)
    assert tenant.counts(app_engine) == tenant.expected()
    figures = books("kill -9 x3", tenant, app_engine, posted)
    assert (figures["duplicates"], figures["lost"]) == (0, 0)


def test_redis_stopped_flushed_and_restarted_while_deliveries_arrive(
    server: str, app_engine: Engine, stack: dict[str, str], tmp_path: Path
) -> None:
    services = EmbeddedServices(__import__("tests.conftest", fromlist=["TEST_HOME"]).TEST_HOME)
    tenant = CorpusTenant(app_engine, "FI", 80, seed=22)
    log = tmp_path / "worker.log"
    with worker(processes=1, threads=4, env=WORKER_ENV, queues=INGEST, log=log):
        posting = Background(server, [tenant], concurrency=4)
        wait_for(lambda: events_stored(tenant, app_engine) > len(tenant.corpus.deliveries) // 5, timeout=60,
                 interval=0.05)  # a fifth acknowledged: the outage meets the rest in flight
        assert posting.running, "the corpus was posted before the outage could meet it"
        before = events_stored(tenant, app_engine)
        services._stop_redis()
        # Down until deliveries have been acknowledged without Redis (their jobs go nowhere).
        wait_for(lambda: events_stored(tenant, app_engine) >= before + 20, timeout=60, interval=0.05)
        services._start_redis()
        redis.Redis.from_url(stack["REDIS_URL"]).flushall()  # and it came back empty
        assert services.status().redis_url == stack["REDIS_URL"]
        posted = posting.join()
        assert set(posted.codes) == {200}  # the ingress acknowledged every delivery throughout
        drain(tenant, app_engine, log)
    assert tenant.counts(app_engine) == tenant.expected()
    figures = books("redis stop+flush", tenant, app_engine, posted)
    assert (figures["duplicates"], figures["lost"]) == (0, 0)


def test_postgres_restarted_mid_run(server: str, app_engine: Engine, tmp_path: Path) -> None:
    from pgserver._commands import pg_ctl

    from tests.conftest import TEST_HOME

    tenant = CorpusTenant(app_engine, "US", 200, seed=23)
    log = tmp_path / "worker.log"
    with worker(processes=1, threads=4, env=WORKER_ENV, queues=INGEST, log=log):
        posting = Background(server, [tenant], concurrency=4)
        # A fifth of the corpus acknowledged (the ingress's pace, whatever the workers' start-up costs):
        # the outage then meets deliveries in flight, and jobs too.
        wait_for(lambda: events_stored(tenant, app_engine) > len(tenant.corpus.deliveries) // 5, timeout=60,
                 interval=0.05)
        assert posting.running, "the corpus was posted before the outage could meet it"
        user = "pgserver" if os.geteuid() == 0 else None
        pgdata = (TEST_HOME / "postgres").resolve()
        refused = posting.result.retries
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
        # Down until the ingress has refused a delivery for it (a 503 or a refused connection, retried).
        wait_for(lambda: posting.result.retries > refused, timeout=60, interval=0.05)
        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "log"), "start"], pgdata=pgdata,
               user=user, timeout=60)
        posted = posting.join()
        assert set(posted.codes) == {200}
        assert posted.retries > 0  # the outage was real: some deliveries were refused with 503 and retried
        drain(tenant, app_engine, log)
    assert tenant.counts(app_engine) == tenant.expected()
    figures = books("postgres restart", tenant, app_engine, posted)
    assert (figures["duplicates"], figures["lost"]) == (0, 0)


def test_ai_jobs_lost_with_redis_are_swept_once(server: str, app_engine: Engine, admin_engine: Engine,
                                                stack: dict[str, str]) -> None:
    started = time.time()
    tenant = CorpusTenant(app_engine, "US", 30, seed=24)
    with worker(processes=1, threads=4, env=WORKER_ENV, queues=INGEST):
        posted = asyncio.run(post_all(server, [tenant], concurrency=8))
        assert set(posted.codes) == {200}
        settle([tenant], app_engine)
    redis.Redis.from_url(stack["REDIS_URL"]).flushall()  # every `ai` job the ingest sent is gone

    def ai_counts() -> tuple[int, int]:
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant.tenant_id)
            row = conn.execute(text(
                "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM ai_classifications a "
                "WHERE a.message_id = m.id)) FROM messages m WHERE direction = 'inbound'")).one()
        return int(row[0]), int(row[1])

    inbound, classified = ai_counts()
    assert inbound > 0 and classified == 0

    def unclassified(window: list[str]) -> tuple[int, int]:
        """Unclassified inbound messages stored in the window: of every tenant, and of this test's."""
        with admin_engine.begin() as conn:
            row = conn.execute(text(
                "SELECT count(*), count(*) FILTER (WHERE tenant_id = :t) FROM messages m "
                "WHERE direction = 'inbound' AND stored_at >= :since AND stored_at < :until AND NOT EXISTS "
                "(SELECT 1 FROM ai_classifications a WHERE a.message_id = m.id)"),
                {"t": tenant.tenant_id, "since": window[0], "until": window[1]}).one()
        return int(row[0]), int(row[1])

    # No grace, and a horizon reaching back over this test's messages with room to spare (the clock starts
    # a moment after the horizon is computed). Every AI job is gone: each unclassified inbound message in the
    # window the clock looked at needs its job again, exactly once; this test's are all among them.
    env = {"INTAKE_AI_SWEEP_GRACE_SECONDS": "0", "INTAKE_AI_SWEEP_HORIZON_SECONDS": str(time.time() - started + 30)}
    first = sweep(env)
    window = first["ai_window"]
    assert isinstance(window, list)
    lost, ours = unclassified(window)
    assert ours == inbound and first["ai_enqueued"] == lost
    assert sweep(env)["ai_enqueued"] == 0  # those jobs are waiting in Redis: nothing is sent twice
    with worker(processes=1, threads=4, env=WORKER_ENV, queues=("ai",)):
        wait_for(lambda: ai_counts() == (inbound, inbound) and unclassified(window)[0] == 0, timeout=120,
                 interval=0.5)
    assert sweep(env)["ai_enqueued"] == 0  # classified: nothing left to send
