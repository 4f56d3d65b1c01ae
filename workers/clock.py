"""The clock process (`intake clock`, the Procfile's clock): what it schedules, and the loop that runs it.

Every INTAKE_SWEEP_INTERVAL_SECONDS a round: Mailgun token claims past their window forgotten, stored events
never processed sent back to `ingest`, stored messages never classified sent back to `ai` (the sweepers of
`workers.sweeps`), then the data lifecycle's upkeep (SLA breaches every round, retention every
INTAKE_RETENTION_INTERVAL_SECONDS: `pipelines.lifecycle.upkeep`). The counts are Prometheus gauges on
INTAKE_CLOCK_METRICS_PORT. A round that fails (PostgreSQL or Redis away) is logged and the next one tries again.
Run one clock per deployment (two are harmless, just wasteful).

The command line resolves the runtime and the maintenance engine and calls `run` (or `once`, for
`intake clock --once`); the clock builds its broker here, since it sends jobs.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, start_http_server
from sqlalchemy import Engine

from config import Settings
from pipelines.lifecycle.retention import RetentionPolicy
from pipelines.lifecycle.upkeep import Lifecycle
from workers.broker import ensure
from workers.queues import delayed, queue_key
from workers.sweeps import AiSweep, Send, SweepResult, forget_replay_tokens, sweep

log = structlog.get_logger("intake.clock")


@dataclass
class Round:
    """What one round of the clock runs, built from the settings: the sweeps and the lifecycle's upkeep."""

    engine: Engine
    send: Send
    grace: timedelta
    token_ttl: timedelta
    ai_sweep: AiSweep
    lifecycle: Lifecycle


def schedule(settings: Settings, engine: Engine) -> Round:
    """The clock's round on `engine` (the maintenance connection), sending its jobs through the broker."""
    broker = ensure(settings)
    from workers.actors import assist_messages, ingest_events

    def send(tenant: uuid.UUID, event_ids: list[uuid.UUID]) -> None:
        ingest_events.send(str(tenant), [str(e) for e in event_ids])

    def send_ai(tenant: uuid.UUID, message_ids: list[uuid.UUID]) -> None:
        assist_messages.send(str(tenant), [str(m) for m in message_ids])

    def ai_backlog() -> int:  # jobs waiting on the `ai` queue, delayed ones (retries) included
        queue = assist_messages.queue_name
        return int(broker.client.llen(queue_key(queue))) + int(broker.client.llen(queue_key(delayed(queue))))

    return Round(
        engine, send, grace=timedelta(seconds=settings.sweep_grace_seconds),
        token_ttl=timedelta(seconds=2 * settings.webhook_tolerance_seconds),  # past it, a token's timestamp is refused
        ai_sweep=AiSweep(engine, send_ai, ai_backlog, grace=timedelta(seconds=settings.ai_sweep_grace_seconds),
                         horizon=timedelta(seconds=settings.ai_sweep_horizon_seconds)),
        lifecycle=Lifecycle(engine, RetentionPolicy.defaults(settings), batch=settings.retention_batch,
                            retention_every=timedelta(seconds=settings.retention_interval_seconds)))


def once(settings: Settings, engine: Engine) -> dict[str, Any]:
    """One round, and what it did (`intake clock --once`)."""
    work = schedule(settings, engine)
    forgotten = forget_replay_tokens(engine, older_than=work.token_ttl)
    result = sweep(engine, work.send, grace=work.grace)
    ai_enqueued = work.ai_sweep()
    kept = work.lifecycle(datetime.now(UTC))
    return {"enqueued": result.enqueued, "stuck": result.stuck, "failed": result.failed,
            "oldest_unprocessed_seconds": round(result.oldest_seconds, 3), "ai_enqueued": ai_enqueued,
            "ai_window": [t.isoformat() for t in work.ai_sweep.window] if work.ai_sweep.window else None,
            "replay_tokens_forgotten": forgotten, "sla_breaches": vars(kept.breaches),
            "retention_removed": kept.removed.as_dict() if kept.removed else None}


def run(settings: Settings, engine: Engine) -> None:
    """Round after round until SIGTERM or SIGINT, with the counts served as Prometheus metrics."""
    work = schedule(settings, engine)
    stuck = Gauge("intake_events_stuck", "Stored events not processed after the grace period")
    failed = Gauge("intake_events_failed", "Stored events set aside as failed (each has a ledger row)")
    oldest = Gauge("intake_events_oldest_unprocessed_seconds", "Age of the oldest unprocessed event")
    swept = Gauge("intake_events_swept_last", "Events re-enqueued by the last sweep")
    ai_swept = Gauge("intake_ai_swept_last", "Unclassified messages sent back to the ai queue by the last sweep")
    removed_total = Counter("intake_retention_removed", "Records retention removed (event bodies: purged)", ["what"])
    breaches_total = Counter("intake_sla_breaches", "SLA breaches marked by the clock", ["kind"])
    if settings.clock_metrics_port:
        try:
            start_http_server(settings.clock_metrics_port, addr=settings.metrics_host)
        except OSError as exc:
            log.warning("clock.metrics.unavailable", port=settings.clock_metrics_port, error=str(exc))

    def report(result: SweepResult) -> None:
        stuck.set(result.stuck)
        failed.set(result.failed)
        oldest.set(result.oldest_seconds)
        swept.set(result.enqueued)

    def upkeep() -> None:
        done = work.lifecycle(datetime.now(UTC))
        for kind, count in vars(done.breaches).items():
            breaches_total.labels(kind).inc(count)
        for what, count in (done.removed.as_dict() if done.removed else {}).items():
            if what != "batches":
                removed_total.labels(what).inc(count)

    def sweep_ai() -> int:
        sent = work.ai_sweep()
        ai_swept.set(sent)
        return sent

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run_clock(engine, work.send, interval=settings.sweep_interval_seconds, grace=work.grace, on_sweep=report,
              should_stop=lambda: stopping, ai_sweep=sweep_ai, replay_token_ttl=work.token_ttl, lifecycle=upkeep)


def run_clock(engine: Engine, send: Send, *, interval: float, grace: timedelta,
              on_sweep: Callable[[SweepResult], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
              ai_sweep: Callable[[], int] | None = None, replay_token_ttl: timedelta | None = None,
              lifecycle: Callable[[], object] | None = None) -> None:
    """Every `interval`: the sweeps, then `lifecycle` (retention and SLA breaches, pipelines.lifecycle.upkeep)."""
    while not should_stop():
        started = time.monotonic()
        try:
            if replay_token_ttl is not None:
                forget_replay_tokens(engine, older_than=replay_token_ttl)
            result = sweep(engine, send, grace=grace)
            if on_sweep is not None:
                on_sweep(result)
            if ai_sweep is not None:
                ai_sweep()
            if lifecycle is not None:
                lifecycle()
        except Exception as exc:  # Postgres or Redis unavailable: try again next round
            log.warning("sweeper.failed", error=repr(exc))
        while not should_stop() and time.monotonic() - started < interval:
            time.sleep(0.2)
