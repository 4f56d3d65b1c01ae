"""The ceilings the fleet is compared with, measured in the same run on the same machine.

A hello-world ASGI app on the same server and settings as `intake serve`; a no-op actor on the fleet's own
broker with the same processes and threads as `intake worker`; single-row commits and COPY on the same
PostgreSQL. Each comes with its own CPU cost, from the same accounting as the fleet's.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg

from workers.bench.load import load
from workers.bench.procs import free_port, heartbeats, held, process, wait, wait_booted, wait_http
from workers.bench.stack import Stack

if TYPE_CHECKING:
    from workers.bench.options import BenchOptions, Progress, Request


# The kernel counts CPU time in 10 ms ticks; the baselines run long enough for a tick to stay under 2%.
MIN_BASELINE_ITEMS = 5_000


def hello(stack: Stack, requests: list[Request], concurrency: int) -> dict[str, Any]:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "workers.bench.hello:app", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "--backlog", "2048"]
    with process(args, stack.env, stack.watchers, "hello"):
        wait_http(port)
        count = max(len(requests), MIN_BASELINE_ITEMS)
        cycled = (requests[i % len(requests)] for i in range(count))
        renamed = [(f"/v1/webhooks/hello/{i}", headers, body) for i, (_, headers, body) in enumerate(cycled)]
        with stack.watchers.cpu.phase() as spent:
            result = load([port], renamed, concurrency)
    return {"hello_asgi_per_s": round(result.per_second, 1), "hello_p50_ms": round(result.percentile(50), 2),
            "hello_p99_ms": round(result.percentile(99), 2),
            "hello_cpu_ms_per_request": round(spent["hello"] * 1000 / max(1, result.completed), 4)}


def noop(stack: Stack, processes: int, threads: int, jobs: int) -> dict[str, Any]:
    """Jobs per second a no-op actor drains from a pre-filled queue, and its CPU per job."""
    from workers.bench import noop as noop_module

    broker: Any = noop_module.noop.broker
    client = stack.redis
    for n in range(jobs):
        noop_module.noop.send(n)
    key = f"{broker.namespace}:{noop_module.QUEUE}.msgs"
    args = [sys.executable, "-m", "dramatiq", "workers.broker:for_workers", "workers.bench.noop",
            "--processes", str(processes), "--threads", str(threads), "--queues", noop_module.QUEUE, "--skip-logging"]
    before = heartbeats(client)
    with process(args, stack.env, stack.watchers, "noop"), held(client, noop_module.QUEUE) as release:
        wait_booted(client, before, processes)
        remaining = int(client.hlen(key))
        with stack.watchers.cpu.phase() as spent:
            release()  # the jobs are taken only now: every one of them counts, with its CPU
            wait(lambda: int(client.hlen(key)) == 0, timeout=120, interval=0.02)
    return {"dramatiq_noop_per_s": round(remaining / spent["wall"], 1) if spent["wall"] else 0.0,
            "noop_cpu_ms_per_job": round(spent["noop"] * 1000 / max(1, remaining), 4)}


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


def measure(stack: Stack, requests: list[Request], options: BenchOptions, progress: Progress) -> dict[str, Any]:
    progress("baseline: hello-world ASGI app", None)
    results = hello(stack, requests, options.concurrency)
    progress("baseline: PostgreSQL commits and COPY", None)
    small = options.events < 5000  # a quick run (the tests) measures the database for less long
    results["pg_commit_per_s"] = round(pg_commit_rate(stack.admin_url, 0.3 if small else 2.0), 1)
    results["pg_copy_rows_per_s"] = round(pg_copy_rate(stack.admin_url, 20_000 if small else 200_000), 1)
    progress("baseline: no-op dramatiq actor", None)
    results |= noop(stack, options.processes * options.worker_processes, options.threads,
                    jobs=min(20_000, max(MIN_BASELINE_ITEMS, options.events)))
    return results
