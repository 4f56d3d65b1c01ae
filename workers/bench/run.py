"""The benchmark run: baselines and the fleet, in one run, on one machine, with the same client.

Phases:
  1. baselines: a hello-world ASGI app on the same server and settings; a no-op dramatiq actor on the same
     broker with the same processes and threads; single-row commits and COPY on the same PostgreSQL;
  2. ingress: every delivery posted at full speed to `intake serve`, with no workers running;
  3. pipeline: `intake worker` started on the stored backlog, drained;
  4. end to end: fresh deliveries paced at half the measured peak, workers running, latency from the
     ingress's receipt to the worker's commit;
  5. the books: events and messages stored, duplicates, lost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from config import get_settings
from db import migrate
from db.engine import make_engine
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox, create_inbox, create_tenant
from workers.bench.load import LoadResult, render, run_load
from workers.bench.traffic import CHANNELS, Delivery, generate, signed
from workers.broker import ensure
from workers.embedded.services import EmbeddedServices

Progress = Callable[[str, float | None], None]  # (phase description, fraction done or None)


@dataclass(frozen=True)
class BenchOptions:
    events: int = 20_000
    tenants: int = 4
    processes: int = 2
    threads: int = 8
    concurrency: int = 64
    database_url: str | None = None
    admin_database_url: str | None = None
    redis_url: str | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RssSampler:
    """Peak resident memory of a process tree, sampled in the background."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._watched: dict[str, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self._watched[name] = psutil.Process(pid)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for name, proc in list(self._watched.items()):
                try:
                    # dramatiq's parent only supervises: the largest process in the tree is what a worker costs.
                    sizes = [p.memory_info().rss for p in [proc, *proc.children(recursive=True)]]
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0.0), max(sizes) / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@contextmanager
def process(args: list[str], env: dict[str, str], sampler: RssSampler | None = None, name: str = "") -> Iterator[
        subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if sampler is not None:
        sampler.watch(name, proc.pid)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_http(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark waited too long for the fleet")
        time.sleep(interval)


def _load(port: int, requests: list[tuple[str, dict[str, str], bytes]], concurrency: int,
          rate: float | None = None, on_done: Callable[[], None] | None = None) -> LoadResult:
    host = f"127.0.0.1:{port}"
    rendered = [render(host, path, headers, body) for path, headers, body in requests]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: LoadResult = runner(run_load("127.0.0.1", port, rendered, concurrency=concurrency, rate=rate,
                                         on_done=on_done))
    return result


def pg_commit_rate(url: str, seconds: float = 2.0) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE bench_commit (id bigint, v text)")
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn.execute("INSERT INTO bench_commit VALUES (%s, 'x')", (n,))
            n += 1
        return n / (time.perf_counter() - start)


def pg_copy_rate(url: str, rows: int = 200_000) -> float:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TEMP TABLE bench_copy (id bigint, tenant uuid, v text)")
        tenant = uuid.uuid4()
        start = time.perf_counter()
        with conn.cursor().copy("COPY bench_copy (id, tenant, v) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((i, tenant, "a message body of ordinary length"))
        conn.commit()
        return rows / (time.perf_counter() - start)


def noop_rate(env: dict[str, str], redis_url: str, processes: int, threads: int, jobs: int) -> float:
    """Jobs per second a no-op actor drains from a pre-filled queue, on the fleet's broker settings."""
    from workers.bench import noop as noop_module

    broker: Any = noop_module.noop.broker
    client = redis.Redis.from_url(redis_url)
    for n in range(jobs):
        noop_module.noop.send(n)
    key = f"{broker.namespace}:{noop_module.QUEUE}.msgs"
    args = [sys.executable, "-m", "dramatiq", "workers.broker:for_workers", "workers.bench.noop",
            "--processes", str(processes), "--threads", str(threads), "--queues", noop_module.QUEUE, "--skip-logging"]
    with process(args, env):
        _wait(lambda: int(client.hlen(key)) < jobs, timeout=60, interval=0.01)
        start, remaining = time.perf_counter(), int(client.hlen(key))
        _wait(lambda: int(client.hlen(key)) == 0, timeout=120, interval=0.02)
        seconds = time.perf_counter() - start
    return remaining / seconds if seconds else 0.0


def _setup_tenants(app_url: str, secret_key: str, count: int) -> list[dict[str, CreatedInbox]]:
    engine = make_engine(app_url, pool_size=1, application_name="intake-bench")
    box = SecretBox(secret_key)
    issued = {"twilio": {"auth_token": "bench-twilio"}, "whatsapp": {"app_secret": "bench-meta"}}
    tenants = []
    try:
        for n in range(count):
            with engine.begin() as conn:
                tenant = create_tenant(conn, f"Bench tenant {n}")
                tenants.append({ch: create_inbox(conn, box, tenant, ch, given_secrets=issued.get(ch),
                                                 settings={"rate_limit_per_second": 1e9, "rate_limit_burst": 10**9})
                                for ch in CHANNELS})
    finally:
        engine.dispose()
    return tenants


def _books(admin_url: str, deliveries: list[Delivery]) -> dict[str, Any]:
    expected_keys = {d.message_key for d in deliveries}
    with psycopg.connect(admin_url) as conn:
        events = conn.execute("SELECT count(*), count(*) FILTER (WHERE status <> 'processed') "
                              "FROM inbound_events").fetchone()
        stored, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (inbox_id, external_id)) FROM messages").fetchone()  # type: ignore[misc]
        keys = {f"{i}:{e}" for i, e in conn.execute("SELECT inbox_id, external_id FROM messages")}
    assert events is not None
    return {"deliveries_sent": len(deliveries), "events_stored": events[0], "events_unprocessed": events[1],
            "messages_expected": len(expected_keys), "messages_stored": stored,
            "duplicates": stored - distinct, "lost": len(expected_keys - keys)}


def run(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    embedded = None
    sampler = RssSampler()
    try:
        if options.database_url and options.redis_url:
            app_url, redis_url = options.database_url, options.redis_url
            admin_url = options.admin_database_url or app_url
            secret_key = os.environ.get("INTAKE_SECRET_KEY") or "bench-secret-key-for-this-run-only"
        else:
            progress("starting embedded PostgreSQL and Redis", None)
            embedded = EmbeddedServices(home)
            status = embedded.up()
            assert status.database_url and status.admin_database_url and status.redis_url
            app_url, admin_url, redis_url = status.database_url, status.admin_database_url, status.redis_url
            secret_key = embedded.secret_key()
        migrate.upgrade(admin_url, embedding_dim=get_settings().embedding_dim)
        redis.Redis.from_url(redis_url).flushdb()
        env = {**os.environ, "DATABASE_URL": app_url, "INTAKE_ADMIN_DATABASE_URL": admin_url, "REDIS_URL": redis_url,
               "INTAKE_SECRET_KEY": secret_key, "INTAKE_HOME": str(home), "INTAKE_LOG_LEVEL": "warning",
               "INTAKE_LOG_FORMAT": "json", "INTAKE_WORKER_METRICS_PORT": "0"}
        # This process sends the no-op baseline's jobs: its broker is the fleet's, on this run's Redis.
        ensure(get_settings().model_copy(update={"redis_url": redis_url, "database_url": app_url,
                                                 "admin_database_url": admin_url}))

        progress("creating tenants and signing deliveries", None)
        tenants = _setup_tenants(app_url, secret_key, options.tenants)
        deliveries = generate(tenants, options.events, seed=1)
        paced_count = max(1000, options.events // 4)
        paced = generate(tenants, paced_count, seed=2, duplicate_rate=0.0)
        web_port = _free_port()
        requests = signed(deliveries, f"http://127.0.0.1:{web_port}")
        paced_requests = signed(paced, f"http://127.0.0.1:{web_port}")
        results: dict[str, Any] = {"options": options.__dict__ | {"database_url": None, "admin_database_url": None,
                                                                 "redis_url": None}}

        progress("baseline: hello-world ASGI app", None)
        hello_port = _free_port()
        hello_args = [sys.executable, "-m", "uvicorn", "workers.bench.hello:app", "--port", str(hello_port),
                      "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
                      "--backlog", "2048"]
        with process(hello_args, env):
            _wait_http(hello_port)
            hello_requests = [(f"/v1/webhooks/hello/{i}", h, b) for i, (_, h, b) in enumerate(requests)]
            hello = _load(hello_port, hello_requests, options.concurrency)

        progress("baseline: PostgreSQL commits and COPY", None)
        pg_commits = pg_commit_rate(admin_url)
        pg_copy = pg_copy_rate(admin_url)

        progress("baseline: no-op dramatiq actor", None)
        noop = noop_rate(env, redis_url, options.processes, options.threads, jobs=min(20_000, options.events))

        progress("ingress: posting every delivery", 0.0)
        done = [0]

        def tick() -> None:
            done[0] += 1
            if done[0] % 500 == 0:
                progress("ingress: posting every delivery", done[0] / len(requests))

        web_args = [sys.executable, "-m", "workers", "serve", "--port", str(web_port)]
        worker_args = [sys.executable, "-m", "workers", "worker", "--processes", str(options.processes),
                       "--threads", str(options.threads), "--queues", "ingest"]
        with process(web_args, env, sampler, "web"):
            _wait_http(web_port)
            ingress = _load(web_port, requests, options.concurrency, on_done=tick)
            ingress_stats = ingress.statuses

            progress("pipeline: workers draining the backlog", 0.0)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                def unprocessed() -> int:
                    row = conn.execute("SELECT count(*) FROM inbound_events WHERE status <> 'processed'").fetchone()
                    return int(row[0]) if row else 0

                total_events = int(conn.execute("SELECT count(*) FROM inbound_events").fetchone()[0])  # type: ignore[index]
                with process(worker_args, env, sampler, "worker"):
                    def drained() -> bool:
                        left = unprocessed()
                        progress("pipeline: workers draining the backlog", 1 - left / max(1, total_events))
                        return left == 0

                    _wait(drained, timeout=600, interval=0.25)
                    row = conn.execute("SELECT count(*), extract(epoch FROM max(stored_at) - min(stored_at)) "
                                       "FROM messages").fetchone()
                    assert row is not None
                    pipeline_messages, pipeline_seconds = int(row[0]), float(row[1] or 0)
                    pipeline_rate = pipeline_messages / pipeline_seconds if pipeline_seconds else 0.0

                    rate = 0.5 * min(ingress.per_second, pipeline_rate or ingress.per_second)
                    progress(f"end to end: {rate:.0f} deliveries/s with workers running", 0.0)
                    mark = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                    paced_result = _load(web_port, paced_requests, options.concurrency, rate=rate)
                    _wait(lambda: unprocessed() == 0, timeout=300, interval=0.1)
                    latency = conn.execute(
                        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
                        "(ORDER BY extract(epoch FROM stored_at - received_at) * 1000) "
                        "FROM messages WHERE received_at >= %s", (mark,)).fetchone()[0]  # type: ignore[index]

        progress("ai: classifying and drafting the stored messages", 0.0)
        ai_args = [sys.executable, "-m", "workers", "worker", "--processes", str(options.processes),
                   "--threads", str(options.threads), "--queues", "ai"]
        with psycopg.connect(admin_url, autocommit=True) as conn:
            def classified() -> int:
                row = conn.execute("SELECT count(*) FROM ai_classifications").fetchone()
                return int(row[0]) if row else 0

            total_messages = int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])  # type: ignore[index]
            with process(ai_args, env, sampler, "worker_ai"):
                started = time.perf_counter()

                def ai_done() -> bool:
                    done_now = classified()
                    progress("ai: classifying and drafting the stored messages", done_now / max(1, total_messages))
                    return done_now >= total_messages or time.perf_counter() - started > 90

                _wait(ai_done, timeout=120, interval=0.5)
                ai_seconds = time.perf_counter() - started
                ai_messages = classified()
        progress("checking the books", None)
        books = _books(admin_url, deliveries + paced)
        results.update({
            "ingress": {"accepted_per_s": round(ingress.per_second, 1), "p50_ms": round(ingress.percentile(50), 2),
                        "p99_ms": round(ingress.percentile(99), 2), "requests": ingress.completed,
                        "statuses": ingress_stats},
            "pipeline": {"messages_per_s": round(pipeline_rate, 1), "messages": pipeline_messages,
                         "seconds": round(pipeline_seconds, 2)},
            "ai": {"messages_per_s": round(ai_messages / ai_seconds, 1) if ai_seconds else None,
                   "messages": ai_messages, "provider": os.environ.get("INTAKE_AI_PROVIDER", "local")},
            "e2e": {"rate_per_s": round(rate, 1), "p50_ms": round(float(latency[0]), 2),
                    "p99_ms": round(float(latency[1]), 2), "statuses": paced_result.statuses},
            "baseline": {"hello_asgi_per_s": round(hello.per_second, 1), "hello_p50_ms": round(hello.percentile(50), 2),
                         "hello_p99_ms": round(hello.percentile(99), 2),
                         "dramatiq_noop_per_s": round(noop, 1), "pg_commit_per_s": round(pg_commits, 1),
                         "pg_copy_rows_per_s": round(pg_copy, 1)},
            "ratio": {"ingress_vs_hello": round(ingress.per_second / hello.per_second, 3) if hello.per_second else None,
                      "pipeline_vs_noop": round(pipeline_rate / noop, 3) if noop else None},
            "rss_mb": {"web_peak": round(sampler.peaks.get("web", 0.0), 1),
                       "worker_peak": round(sampler.peaks.get("worker", 0.0), 1),
                       "ai_worker_peak": round(sampler.peaks.get("worker_ai", 0.0), 1)},
            "correct": books,
        })
        return results
    finally:
        sampler.stop()
        if embedded is not None:
            embedded.down()
        shutil.rmtree(home, ignore_errors=True)
