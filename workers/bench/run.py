"""The benchmark run: baselines and the fleet, in one run, on one machine, with the same client.

Phases:
  1. baselines: a hello-world ASGI app on the same server and settings; a no-op dramatiq actor on the same
     broker with the same processes and threads; single-row commits and COPY on the same PostgreSQL;
  2. ingress: every delivery posted at full speed to the web processes, with no workers running;
  3. pipeline: ingest workers started on the stored backlog, drained;
  4. ai: AI workers classifying and drafting the stored messages (for at most `ai_seconds`);
  5. end to end: fresh deliveries paced at half the measured peak, with the ingest and the AI workers running
     (as in production: the AI workers are still busy with the backlog), latency from the ingress's receipt
     to the worker's commit;
  6. lone messages: one delivery at a time after a quiet period, the same latency;
  7. the feed (workers.bench.feed): a backlog of change events delivered to a local webhook receiver (events
     per second, CPU per event), then deliveries paced at half the lower of the two peaks, from the
     ingress's receipt to the receiver getting `message.received`;
  8. the books: events and messages stored, duplicates, lost.

Every phase reads the CPU time of each process tree (web, workers, PostgreSQL, Redis) before and after, so
each figure comes with its cost: CPU milliseconds per acknowledged delivery, stored or classified message.
A millisecond of CPU per message is one core per 1,000 messages a second: the sizing table adds them up.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from db.tenancy import TenantId
from workers.bench import baselines, feed
from workers.bench.load import LoadResult, load
from workers.bench.options import BenchOptions, Progress, Request, cores, per_item
from workers.bench.procs import wait
from workers.bench.relay import Counts
from workers.bench.stack import Stack, create_tenants, open_stack
from workers.bench.traffic import Delivery, generate, signed
from workers.queues import AI_QUEUE, bodies_key, queue_key


def indexed(conn: psycopg.Connection[Any], sql: str, *args: Any) -> Any:
    """The first row of `sql`, read through indexes. The benchmark polls while the fleet works: with the
    statistics of a moment ago (every event waiting) the planner would scan every event on each poll, and
    the polling alone took a tenth of PostgreSQL's CPU in the pipeline phase."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        return conn.execute(sql, args).fetchone()


def unprocessed(conn: psycopg.Connection[Any]) -> int:
    """Events waiting: a count over the waiting index, as long as what waits."""
    row = indexed(conn, "SELECT count(*) FROM inbound_events WHERE status = 'received'")
    return int(row[0]) if row else 0


def waiting(conn: psycopg.Connection[Any]) -> bool:
    """Whether any event waits: one probe of the waiting index."""
    row = indexed(conn, "SELECT EXISTS (SELECT 1 FROM inbound_events WHERE status = 'received')")
    return bool(row and row[0])


def stored(conn: psycopg.Connection[Any], delivery: Delivery) -> bool:
    """Whether the delivery's message is stored: one probe of its unique key."""
    inbox, _, external_id = delivery.message_key.partition(":")
    row = indexed(conn, "SELECT EXISTS (SELECT 1 FROM messages WHERE tenant_id = %s AND inbox_id = %s "
                        "AND external_id = %s)", delivery.inbox.tenant_id, inbox, external_id)
    return bool(row and row[0])


def count(conn: psycopg.Connection[Any], sql: str, *args: Any) -> int:
    row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def latency(conn: psycopg.Connection[Any], since: datetime) -> tuple[float, float, int]:
    """p50 and p99 of ingress receipt to worker commit, in ms, of the messages received since `since`."""
    row = conn.execute(
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
        "(ORDER BY extract(epoch FROM stored_at - received_at) * 1000), count(*) "
        "FROM messages WHERE received_at >= %s", (since,)).fetchone()
    assert row is not None
    p50, p99 = row[0] or (0.0, 0.0)
    return round(float(p50), 2), round(float(p99), 2), int(row[1])


def drain(stack: Stack, conn: psycopg.Connection[Any], describe: str, progress: Progress,
          release: Callable[[], None], timeout: float = 600) -> dict[str, Any]:
    """Workers (already booted, their backlog held until `release`) drain the stored events: rate from the
    release to the last commit, CPU per stored message for each process tree. The time and the CPU are taken
    before the backlog is released, so no message is stored before they start (with a small backlog the
    workers could otherwise finish before the measurement began)."""
    total = max(1, unprocessed(conn))
    mark = now(conn)
    polls = itertools.count()
    crossed = stack.network("worker")
    with stack.watchers.cpu.phase() as spent:
        release()

        def drained() -> bool:
            if not waiting(conn):
                return True
            if next(polls) % 10 == 0:  # the count reads every waiting entry: once a second is enough
                progress(describe, 1 - unprocessed(conn) / total)
            return False

        wait(drained, timeout=timeout, interval=0.1)
    row = conn.execute("SELECT count(*), extract(epoch FROM max(stored_at) - %s) FROM messages WHERE stored_at >= %s",
                       (mark, mark)).fetchone()
    assert row is not None
    messages, seconds = int(row[0]), float(row[1] or 0)
    return {"messages_per_s": round(messages / seconds, 1) if seconds else 0.0, "messages": messages,
            "seconds": round(seconds, 2), "cpu_ms_per_message": per_item(spent, messages), "cores": cores(spent),
            **network(stack, "worker", crossed, messages)}


def network(stack: Stack, kind: str, before: dict[str, Counts], messages: int) -> dict[str, Any]:
    """The round trips `kind`'s processes made to each relayed service since `before`: per message, and for
    PostgreSQL per transaction (an ingest worker's transactions are its jobs). Nothing without relays."""
    if not stack.relays:
        return {}
    out: dict[str, Any] = {}
    for service, counts in stack.network(kind).items():
        crossed = counts - before[service]
        figures: dict[str, Any] = {"round_trips": crossed.round_trips, "connections": crossed.connections,
                                   "rtt_ms": stack.relays[service].delay_ms,
                                   "round_trips_per_message": round(crossed.round_trips / messages, 2)
                                   if messages else None}
        if service == "db":
            figures["transactions"] = crossed.transactions
            figures["round_trips_per_transaction"] = (round(crossed.round_trips / crossed.transactions, 2)
                                                      if crossed.transactions else None)
        out[service] = figures
    return {"network": out}


def post(stack: Stack, ports: list[int], requests: list[Request], concurrency: int, *,
         rate: float | None = None, on_done: Callable[[], None] | None = None) -> tuple[LoadResult, dict[str, float]]:
    with stack.watchers.cpu.phase() as spent:
        result = load(ports, requests, concurrency, rate=rate, on_done=on_done)
    return result, spent


def ingress(stack: Stack, ports: list[int], requests: list[Request], concurrency: int,
            progress: Progress) -> dict[str, Any]:
    done = [0]

    def tick() -> None:
        done[0] += 1
        if done[0] % 500 == 0:
            progress("ingress: posting every delivery", done[0] / len(requests))

    result, spent = post(stack, ports, requests, concurrency, on_done=tick)
    acknowledged = sum(n for status, n in result.statuses.items() if 200 <= status < 300)
    return {"accepted_per_s": round(acknowledged / result.seconds, 1) if result.seconds else 0.0,
            "p50_ms": round(result.percentile(50), 2), "p99_ms": round(result.percentile(99), 2),
            "requests": result.completed, "statuses": result.statuses,
            "cpu_ms_per_delivery": per_item(spent, acknowledged), "cores": cores(spent)}


def ai(stack: Stack, conn: psycopg.Connection[Any], options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """The AI workers (already booted) on the stored messages, for at most `ai_seconds`."""
    total = count(conn, "SELECT count(*) FROM messages")
    first = count(conn, "SELECT count(*) FROM ai_classifications")
    started = time.perf_counter()
    with stack.watchers.cpu.phase() as spent:
        def done() -> bool:
            classified = count(conn, "SELECT count(*) FROM ai_classifications")
            progress("ai: classifying and drafting the stored messages", classified / max(1, total))
            return classified >= total or time.perf_counter() - started > options.ai_seconds

        wait(done, timeout=options.ai_seconds + 60, interval=0.25)
    classified = count(conn, "SELECT count(*) FROM ai_classifications") - first
    return {"messages_per_s": round(classified / spent["wall"], 1) if spent["wall"] else None,
            "messages": classified, "cpu_ms_per_message": per_item(spent, classified), "cores": cores(spent)}


def end_to_end(stack: Stack, conn: psycopg.Connection[Any], ports: list[int], requests: list[Request], rate: float,
               concurrency: int, progress: Progress) -> dict[str, Any]:
    """Deliveries paced at `rate` with the workers running: receipt to commit, p50 and p99."""
    progress(f"end to end: {rate:.0f} deliveries/s with the workers running", None)
    mark = now(conn)
    classified = count(conn, "SELECT count(*) FROM ai_classifications")
    crossed = stack.network("worker")
    result, spent = post(stack, ports, requests, concurrency, rate=rate)
    wait(lambda: not waiting(conn), timeout=300, interval=0.05)
    p50, p99, messages = latency(conn, mark)
    return {"rate_per_s": round(rate, 1), "p50_ms": p50, "p99_ms": p99, "messages": messages,
            "statuses": result.statuses, "cores": cores(spent),
            "ai_classified_meanwhile": count(conn, "SELECT count(*) FROM ai_classifications") - classified,
            **network(stack, "worker", crossed, messages)}


def lone(stack: Stack, conn: psycopg.Connection[Any], ports: list[int], deliveries: list[Delivery],
         requests: list[Request], options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """One delivery at a time, each after `quiet_seconds` without traffic: the first message of a quiet
    conversation must not wait for a batch window or a sleeping consumer."""
    # The AI backlog left by the earlier phases is not the quiet fleet this phase is about.
    stack.redis.delete(queue_key(AI_QUEUE), bodies_key(AI_QUEUE))
    mark = now(conn)
    for n, (delivery, request) in enumerate(zip(deliveries, requests, strict=True)):
        progress("lone messages after a quiet period", n / len(requests))
        time.sleep(options.quiet_seconds)  # the quiet period is what is measured: a sleep is the point
        load(ports, [request], 1)
        wait(lambda: stored(conn, delivery), timeout=30, interval=0.01)  # noqa: B023
    p50, p99, messages = latency(conn, mark)
    return {"p50_ms": p50, "p99_ms": p99, "messages": messages, "quiet_seconds": options.quiet_seconds}


def feed_phases(stack: Stack, conn: psycopg.Connection[Any], ports: list[int], tenants: list[dict[str, Any]],
                deliveries: list[Delivery], requests: list[Request], peak: float, options: BenchOptions,
                progress: Progress) -> dict[str, Any]:
    """The change feed's webhooks: a backlog's delivery rate, then latency at half the lower peak."""
    ids = [TenantId(next(iter(t.values())).tenant_id) for t in tenants]
    result: dict[str, Any] = {"throughput": feed.throughput(stack, conn, ids, options.events,
                                                             processes=options.processes, threads=16,
                                                             progress=progress)}
    rate = options.feed_rate or 0.5 * min(peak, result["throughput"]["events_per_s"] or peak)

    def send() -> dict[str, float]:
        """Each message's acknowledgement: the first 2xx among the requests that carry it."""
        result, _ = post(stack, ports, requests, options.concurrency, rate=rate)
        acked: dict[str, float] = {}
        for index, at in result.acked_at.items():
            key = deliveries[index].message_key
            acked[key] = min(at, acked.get(key, at))
        return acked

    result["latency"] = {"rate_per_s": round(rate, 1), **feed.latency(
        stack, conn, ids, send, processes=options.processes, threads=16, progress=progress)}
    return result


def run_feed(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """`intake bench --feed`: only what the feed's targets are measured against. The ingress stores a backlog,
    the ingest workers drain it (the pipeline's messages per second, the rate the feed must keep up with), then
    the feed's phases run with the ingest workers still up: a backlog of change events delivered to a local
    receiver, and acknowledgement-to-receiver latency at half the lower of the two peaks."""
    with open_stack(options.database_url, options.admin_database_url, options.redis_url,
                    db_rtt_ms=options.db_rtt_ms, redis_rtt_ms=options.redis_rtt_ms) as stack:
        progress("creating tenants and signing deliveries", None)
        tenants = create_tenants(stack, options.tenants)
        deliveries = generate(tenants, options.events, seed=1)
        feed_paced = generate(tenants, min(options.events, max(500, options.events // 10)), seed=4, duplicate_rate=0.0)
        base = "http://127.0.0.1:8000"
        requests, feed_requests = signed(deliveries, base), signed(feed_paced, base)
        results: dict[str, Any] = {"options": options.public(), "load_average": [round(os.getloadavg()[0], 1)]}
        with stack.webs(options.web_processes) as ports, stack.admin() as conn:
            progress("ingress: posting every delivery", 0.0)
            results["ingress"] = ingress(stack, ports, requests, options.concurrency, progress)
            with stack.workers("worker", "ingest", commands=options.worker_processes, processes=options.processes,
                               threads=options.threads, hold=True) as release:
                results["pipeline"] = drain(stack, conn, "pipeline: ingest workers draining the backlog", progress,
                                            release)
                peak = min(results["ingress"]["accepted_per_s"], results["pipeline"]["messages_per_s"]
                           or results["ingress"]["accepted_per_s"])
                results["feed"] = feed_phases(stack, conn, ports, tenants, feed_paced, feed_requests, peak, options,
                                              progress)
            results["correct"] = books(conn, deliveries + feed_paced)
        delivered, stored = results["feed"]["throughput"]["events_per_s"], results["pipeline"]["messages_per_s"]
        results["feed"]["keeps_up"] = bool(delivered and stored and delivered >= stored)
        results["load_average"].append(round(os.getloadavg()[0], 1))  # the machine's, at the start and the end
        results["python"] = sys.version.split()[0]
        return results


def books(conn: psycopg.Connection[Any], deliveries: list[Delivery], since: datetime | None = None) -> dict[str, Any]:
    """Every acknowledged delivery's message stored once: what was sent against what the tables hold."""
    expected = {d.message_key for d in deliveries}
    where, args = ("WHERE received_at >= %s", (since,)) if since else ("", ())
    events = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE status <> 'processed') "
                          f"FROM inbound_events {where}", args).fetchone()
    stored = conn.execute(f"SELECT count(*), count(DISTINCT (inbox_id, external_id)) FROM messages {where}",
                          args).fetchone()
    keys = {f"{i}:{e}" for i, e in conn.execute(f"SELECT inbox_id, external_id FROM messages {where}", args)}
    assert events is not None and stored is not None
    return {"deliveries_sent": len(deliveries), "events_stored": events[0], "events_unprocessed": events[1],
            "messages_expected": len(expected), "messages_stored": stored[0],
            "duplicates": stored[0] - stored[1], "lost": len(expected - keys)}


def sizing(r: dict[str, Any]) -> dict[str, float | None]:
    """Cores per 1,000 messages a second, per process kind: its CPU ms per message, phase by phase."""
    phases = [r["ingress"]["cpu_ms_per_delivery"], r["pipeline"]["cpu_ms_per_message"],
              r["ai"]["cpu_ms_per_message"]]

    def total(name: str) -> float | None:
        values = [p.get(name) for p in phases if p.get(name) is not None]
        return round(sum(values), 3) if values else None

    out = {"web": phases[0].get("web"), "ingest_worker": phases[1].get("worker"),
           "ai_worker": phases[2].get("worker_ai"), "postgres": total("postgres"), "redis": total("redis")}
    out["total"] = round(sum(v for v in out.values() if v is not None), 3)
    return out


def run(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    with open_stack(options.database_url, options.admin_database_url, options.redis_url,
                    db_rtt_ms=options.db_rtt_ms, redis_rtt_ms=options.redis_rtt_ms) as stack:
        progress("creating tenants and signing deliveries", None)
        tenants = create_tenants(stack, options.tenants)
        deliveries = generate(tenants, options.events, seed=1)
        paced = generate(tenants, min(options.events, max(1000, options.events // 4)), seed=2, duplicate_rate=0.0)
        singles = generate(tenants, options.lone_messages, seed=3, duplicate_rate=0.0)
        feed_paced = generate(tenants, min(options.events, max(500, options.events // 10)), seed=4, duplicate_rate=0.0)
        base = "http://127.0.0.1:8000"  # the Host every request names; signatures cover it, not the port
        requests, paced_requests, lone_requests, feed_requests = (signed(d, base) for d in (deliveries, paced, singles,
                                                                                         feed_paced))
        results: dict[str, Any] = {"options": options.public()}
        results["baseline"] = baselines.measure(stack, requests, options, progress)
        with stack.webs(options.web_processes) as ports, stack.admin() as conn:
            progress("ingress: posting every delivery", 0.0)
            results["ingress"] = ingress(stack, ports, requests, options.concurrency, progress)
            progress("pipeline: ingest workers draining the backlog", 0.0)
            with stack.workers("worker", "ingest", commands=options.worker_processes, processes=options.processes,
                               threads=options.threads, hold=True) as release:
                results["pipeline"] = drain(stack, conn, "pipeline: ingest workers draining the backlog", progress,
                                            release)
                progress("ai: starting the AI workers", None)
                with stack.workers("worker_ai", "ai", commands=options.worker_processes,
                                   processes=options.ai_processes, threads=options.threads, nice=options.ai_nice):
                    results["ai"] = ai(stack, conn, options, progress)
                    peak = min(results["ingress"]["accepted_per_s"], results["pipeline"]["messages_per_s"]
                               or results["ingress"]["accepted_per_s"])
                    results["e2e"] = end_to_end(stack, conn, ports, paced_requests, 0.5 * peak, options.concurrency,
                                                progress)
                    results["lone"] = lone(stack, conn, ports, singles, lone_requests, options, progress)
                    results["feed"] = feed_phases(stack, conn, ports, tenants, feed_paced, feed_requests, peak,
                                                  options, progress)
            progress("checking the books", None)
            results["correct"] = books(conn, deliveries + paced + singles + feed_paced)
        r = results
        r["ai"]["provider"] = stack.env.get("INTAKE_AI_PROVIDER", "local")
        r["ratio"] = {
            "ingress_vs_hello": _ratio(r["ingress"]["accepted_per_s"], r["baseline"]["hello_asgi_per_s"]),
            "pipeline_vs_noop": _ratio(r["pipeline"]["messages_per_s"], r["baseline"]["dramatiq_noop_per_s"]),
            "web_cpu_vs_hello": _ratio(r["ingress"]["cpu_ms_per_delivery"].get("web"),
                                       r["baseline"]["hello_cpu_ms_per_request"]),
        }
        r["sizing_cores_per_1000_per_s"] = sizing(r)
        peaks = stack.watchers.rss.peaks
        r["rss_mb"] = {name: round(peaks.get(name, 0.0), 1) for name in ("web", "worker", "worker_ai")}
        r["python"] = sys.version.split()[0]
        return results


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
