"""`intake dlq`, `intake events` and `intake clock`: the operators' tools for failures and stored events."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine, text

from config import get_settings
from db.engine import make_engine
from workers import dlq as ledger
from workers.cli import console, emit, friendly_errors, main, maintenance_runtime, out
from workers.runtime import Runtime

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class When(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """An ISO 8601 date or time, or an age such as 30m, 2h, 7d."""

    name = "when"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        match = _RELATIVE.match(str(value).strip())
        if match:
            return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither an ISO date/time nor an age like 30m, 2h or 7d", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def admin_engine(rt: Runtime | None = None) -> Engine:
    """An engine on the maintenance connection; refused (one line, exit 1) without intake_maintenance
    rights, since under row-level security a cross-tenant command would see nothing and say so."""
    if rt is None:
        rt = maintenance_runtime(_command_name(click.get_current_context()))
    return make_engine(rt.admin_database_url, pool_size=2, application_name="intake-ops")


def _command_name(ctx: click.Context) -> str:
    """`intake dlq list`, whatever name the program was started under."""
    names: list[str] = []
    while ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["intake", *names])


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def filter_options(func: Any) -> Any:
    for option in reversed([
        click.option("--queue", help="Only this queue (ingest, ai, maintenance)."),
        click.option("--actor", help="Only this actor."),
        click.option("--tenant", type=click.UUID, help="Only this tenant."),
        click.option("--error", "error_text", help="Exception type or message contains this text."),
        click.option("--since", type=When(), help="Failed at or after (ISO time or age: 2h, 7d)."),
        click.option("--until", type=When(), help="Failed before (ISO time or age)."),
    ]):
        func = option(func)
    return func


def make_filters(ids: tuple[uuid.UUID, ...] = (), status: str | None = None, **kw: Any) -> ledger.Filters:
    return ledger.Filters(ids=tuple(ids), queue=kw.get("queue"), actor=kw.get("actor"), tenant=kw.get("tenant"),
                          error=kw.get("error_text"), since=kw.get("since"), until=kw.get("until"), status=status)


def has_filter(kw: dict[str, Any]) -> bool:
    return any(kw.get(k) is not None for k in ("queue", "actor", "tenant", "error_text", "since", "until"))


@main.group()
def dlq() -> None:
    """The failure ledger: jobs that failed for good, and tools to replay them."""


@dlq.command("list")
@filter_options
@click.option("--status", type=click.Choice(ledger.STATUSES), default=None, help="Default: every status.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def dlq_list(status: str | None, limit: int, as_json: bool, **kw: Any) -> None:
    """Failures, newest first, with counts by error type."""
    filters = make_filters(status=status, **kw)
    engine = admin_engine()
    with engine.connect() as conn:
        rows = ledger.list_failures(conn, filters, limit)
        counts = ledger.counts_by_error(conn, filters)
        total = ledger.count(conn, filters)
    engine.dispose()
    if as_json:
        emit({"total": total, "failures": rows, "by_error": counts})
        return
    table = Table(title=f"{total} failures" + (f" (newest {len(rows)})" if total > len(rows) else ""))
    for column in ("id", "when", "queue/actor", "tenant", "error", "tries", "status"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["last_failed_at"].strftime("%Y-%m-%d %H:%M:%S"), f"{r['queue']}/{r['actor']}",
                      str(r["tenant_id"] or "-")[:8], f"{r['exception_type']}: {r['exception_message'][:60]}",
                      str(r["attempts"]), r["status"])
    out.print(table)
    summary = Table(title="by error")
    for column in ("error type", "status", "count"):
        summary.add_column(column)
    for c in counts:
        summary.add_row(c["exception_type"], c["status"], str(c["count"]))
    out.print(summary)


@dlq.command("show")
@click.argument("failure_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def dlq_show(failure_id: uuid.UUID, as_json: bool) -> None:
    """Everything about one failure, traceback included."""
    engine = admin_engine()
    with engine.connect() as conn:
        row = ledger.show(conn, failure_id)
    engine.dispose()
    if row is None:
        console.print(f"[bold red]error:[/] no failure {failure_id}")
        raise SystemExit(1)
    if as_json:
        emit(row)
        return
    for key in ("id", "status", "queue", "actor", "message_id", "tenant_id", "ref_id", "attempts",
                "first_failed_at", "last_failed_at", "replayed_at", "exception_type", "exception_message"):
        out.print(f"[bold]{key}[/]: {row[key]}", highlight=False)
    out.print("[bold]message[/]:", row["message"])
    out.print("[bold]traceback[/]:\n" + row["traceback"], highlight=False)


@dlq.command("replay")
@click.argument("ids", nargs=-1, type=click.UUID)
@click.option("--all", "replay_all", is_flag=True, help="Every dead failure.")
@filter_options
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; change nothing.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.1), default=None, help="At most this many per second.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def dlq_replay(ids: tuple[uuid.UUID, ...], replay_all: bool, dry_run: bool, batch: int, rate: float | None,
               as_json: bool, **kw: Any) -> None:
    """Re-enqueue failed jobs with fresh retry counts; each failure is replayed once."""
    if not (ids or replay_all or has_filter(kw)):
        raise click.UsageError("name failure ids, give a filter, or pass --all")
    filters = make_filters(ids, status="dead", **kw)
    engine = admin_engine()
    with engine.connect() as conn:
        pending = ledger.count(conn, filters)
    if dry_run:
        engine.dispose()
        if as_json:
            emit({"would_replay": pending, "dry_run": True})
        else:
            out.print(f"would replay {pending} failures")
        return
    from workers.broker import broker

    replayed = 0
    with progress() as bar:
        task = bar.add_task("replaying", total=pending)
        for _ in ledger.replay(engine, broker, make_filters(ids, **kw), batch=batch, rate=rate):
            replayed += 1
            bar.advance(task)
    engine.dispose()
    if as_json:
        emit({"replayed": replayed})
    else:
        out.print(f"replayed {replayed} failures")


@dlq.command("discard")
@click.argument("ids", nargs=-1, type=click.UUID)
@click.option("--all", "discard_all", is_flag=True, help="Every dead failure.")
@filter_options
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def dlq_discard(ids: tuple[uuid.UUID, ...], discard_all: bool, as_json: bool, **kw: Any) -> None:
    """Mark dead failures discarded: they stay in the ledger but are never replayed."""
    if not (ids or discard_all or has_filter(kw)):
        raise click.UsageError("name failure ids, give a filter, or pass --all")
    engine = admin_engine()
    with engine.begin() as conn:
        discarded = ledger.discard(conn, make_filters(ids, **kw))
    engine.dispose()
    if as_json:
        emit({"discarded": discarded})
    else:
        out.print(f"discarded {discarded} failures")


@dlq.command("stats")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def dlq_stats(as_json: bool) -> None:
    """Counts by status, and dead failures by actor."""
    engine = admin_engine()
    with engine.connect() as conn:
        data = ledger.stats(conn)
    engine.dispose()
    if as_json:
        emit(data)
        return
    out.print(" ".join(f"{k}={v}" for k, v in data["by_status"].items()))
    for row in data["dead_by_actor"]:
        out.print(f"  {row['queue']}/{row['actor']}: {row['dead']} dead, last at {row['last_failed_at']}")


# -- stored events --------------------------------------------------------------------------------
EVENT_STATUSES = ("received", "processed", "failed")


def event_where(ids: tuple[uuid.UUID, ...], status: str | None, tenant: uuid.UUID | None,
                since: datetime | None, until: datetime | None) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (("status", status), ("tenant_id", tenant)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if ids:
        clauses.append("id = ANY(:ids)")
        params["ids"] = list(ids)
    if since:
        clauses.append("received_at >= :since")
        params["since"] = since
    if until:
        clauses.append("received_at < :until")
        params["until"] = until
    return " AND ".join(clauses) or "true", params


@main.group()
def events() -> None:
    """Stored inbound events: the source of truth every message is derived from."""


@events.command("list")
@click.option("--status", type=click.Choice(EVENT_STATUSES))
@click.option("--tenant", type=click.UUID)
@click.option("--since", type=When())
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def events_list(status: str | None, tenant: uuid.UUID | None, since: datetime | None, limit: int,
                as_json: bool) -> None:
    """Stored events, newest first."""
    where, params = event_where((), status, tenant, since, None)
    engine = admin_engine()
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(text(
            f"SELECT id, tenant_id, inbox_id, channel, dedupe_key, status, attempts, error, received_at, processed_at "
            f"FROM inbound_events WHERE {where} ORDER BY received_at DESC LIMIT :limit"),
            {**params, "limit": limit}).mappings()]
        total = conn.execute(text(f"SELECT count(*) FROM inbound_events WHERE {where}"), params).scalar_one()
    engine.dispose()
    if as_json:
        emit({"total": total, "events": rows})
        return
    table = Table(title=f"{total} events")
    for column in ("id", "received", "channel", "tenant", "status", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["received_at"].strftime("%Y-%m-%d %H:%M:%S"), r["channel"],
                      str(r["tenant_id"])[:8], r["status"], (r["error"] or "")[:60])
    out.print(table)


@events.command("reprocess")
@click.argument("ids", nargs=-1, type=click.UUID)
@click.option("--status", type=click.Choice(EVENT_STATUSES))
@click.option("--tenant", type=click.UUID)
@click.option("--since", type=When())
@click.option("--until", type=When())
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def events_reprocess(ids: tuple[uuid.UUID, ...], status: str | None, tenant: uuid.UUID | None,
                     since: datetime | None, until: datetime | None, as_json: bool) -> None:
    """Run stored events through the pipeline again (idempotent: nothing is stored twice).

    Failed events stay `failed` until their job runs them (it is sent with `retry_failed`), so no other
    batch takes them up meanwhile; the others go back to `received`."""
    if not (ids or status or tenant or since or until):
        raise click.UsageError("name event ids or give at least one of --status, --tenant, --since, --until")
    from workers.actors import ingest_events

    where, params = event_where(ids, status, tenant, since, until)
    engine = admin_engine()
    with engine.begin() as conn:
        rows = conn.execute(text(
            f"UPDATE inbound_events SET status = CASE status WHEN 'failed' THEN 'failed' ELSE 'received' END, "
            f"enqueued_at = now() WHERE {where} RETURNING tenant_id, id"), params).all()
        by_tenant: dict[uuid.UUID, list[str]] = {}
        for tenant_id, event_id in rows:
            by_tenant.setdefault(tenant_id, []).append(str(event_id))
        with progress() as bar:
            task = bar.add_task("enqueueing", total=len(rows))
            for tenant_id, event_ids in by_tenant.items():
                for start in range(0, len(event_ids), 100):
                    chunk = event_ids[start:start + 100]
                    ingest_events.send(str(tenant_id), chunk, retry_failed=True)
                    bar.advance(task, len(chunk))
    engine.dispose()
    if as_json:
        emit({"reprocessing": len(rows)})
    else:
        out.print(f"sent {len(rows)} events to the ingest queue")


@main.command()
@click.option("--once", is_flag=True, help="Sweep once, print the result, and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print one JSON object.")
@friendly_errors
def clock(once: bool, as_json: bool) -> None:
    """Periodic upkeep (the Procfile's clock process): re-enqueue stored events that were never processed,
    and stored messages whose AI job was lost; forget webhook token claims past their window."""
    import os
    import signal

    from prometheus_client import Gauge, start_http_server

    from workers.sweeper import AiSweep, SweepResult, forget_replay_tokens, run_clock, sweep

    rt = maintenance_runtime("intake clock")
    os.environ.update(rt.child_env())
    get_settings.cache_clear()
    settings = get_settings()
    from workers.actors import assist_messages, ingest_events
    from workers.broker import broker

    def send(tenant: uuid.UUID, event_ids: list[uuid.UUID]) -> None:
        ingest_events.send(str(tenant), [str(e) for e in event_ids])

    def send_ai(tenant: uuid.UUID, message_ids: list[uuid.UUID]) -> None:
        assist_messages.send(str(tenant), [str(m) for m in message_ids])

    def ai_backlog() -> int:  # jobs waiting on the `ai` queue, delayed ones (retries) included
        queue = f"{broker.namespace}:{assist_messages.queue_name}"
        return int(broker.client.llen(queue)) + int(broker.client.llen(f"{queue}.DQ"))

    engine = admin_engine(rt)
    grace = timedelta(seconds=settings.sweep_grace_seconds)
    token_ttl = timedelta(seconds=2 * settings.webhook_tolerance_seconds)  # past it, a token's timestamp is refused
    ai_sweep = AiSweep(engine, send_ai, ai_backlog, grace=timedelta(seconds=settings.ai_sweep_grace_seconds),
                       horizon=timedelta(seconds=settings.ai_sweep_horizon_seconds))
    if once:
        forgotten = forget_replay_tokens(engine, older_than=token_ttl)
        result = sweep(engine, send, grace=grace)
        ai_enqueued = ai_sweep()
        engine.dispose()
        data = {"enqueued": result.enqueued, "stuck": result.stuck, "failed": result.failed,
                "oldest_unprocessed_seconds": round(result.oldest_seconds, 3), "ai_enqueued": ai_enqueued,
                "ai_window": [t.isoformat() for t in ai_sweep.window] if ai_sweep.window else None,
                "replay_tokens_forgotten": forgotten}
        emit(data) if as_json else out.print(" ".join(f"{k}={v}" for k, v in data.items()))
        return
    stuck = Gauge("intake_events_stuck", "Stored events not processed after the grace period")
    failed = Gauge("intake_events_failed", "Stored events set aside as failed (each has a ledger row)")
    oldest = Gauge("intake_events_oldest_unprocessed_seconds", "Age of the oldest unprocessed event")
    swept = Gauge("intake_events_swept_last", "Events re-enqueued by the last sweep")
    ai_swept = Gauge("intake_ai_swept_last", "Unclassified messages sent back to the ai queue by the last sweep")
    if settings.clock_metrics_port:
        try:
            start_http_server(settings.clock_metrics_port, addr=settings.worker_metrics_host)
        except OSError as exc:
            console.print(f"[yellow]warning:[/] no metrics on port {settings.clock_metrics_port}: {exc}")

    def report(result: SweepResult) -> None:
        stuck.set(result.stuck)
        failed.set(result.failed)
        oldest.set(result.oldest_seconds)
        swept.set(result.enqueued)

    def sweep_ai() -> int:
        sent = ai_sweep()
        ai_swept.set(sent)
        return sent

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run_clock(engine, send, interval=settings.sweep_interval_seconds, grace=grace, on_sweep=report,
              should_stop=lambda: stopping, ai_sweep=sweep_ai, replay_token_ttl=token_ttl)
    engine.dispose()
