"""`intake dlq` and `intake events`: the operators' tools for failures and stored events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import click
from rich.table import Table

from workers.broker import ensure
from workers.cli.common import When, admin_engine, console, emit, friendly_errors, maintenance_runtime, out, progress
from workers.ops import events as stored
from workers.ops import failures as ledger


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


@click.group()
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
    broker = ensure(maintenance_runtime("intake dlq replay").resolved())
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
@click.group()
def events() -> None:
    """Stored inbound events: the source of truth every message is derived from."""


@events.command("list")
@click.option("--status", type=click.Choice(stored.STATUSES))
@click.option("--tenant", type=click.UUID)
@click.option("--since", type=When())
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def events_list(status: str | None, tenant: uuid.UUID | None, since: datetime | None, limit: int,
                as_json: bool) -> None:
    """Stored events, newest first."""
    filters = stored.Filters(status=status, tenant=tenant, since=since)
    engine = admin_engine()
    with engine.connect() as conn:
        rows = stored.list_events(conn, filters, limit)
        total = stored.count(conn, filters)
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
@click.option("--status", type=click.Choice(stored.STATUSES))
@click.option("--tenant", type=click.UUID)
@click.option("--since", type=When())
@click.option("--until", type=When())
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def events_reprocess(ids: tuple[uuid.UUID, ...], status: str | None, tenant: uuid.UUID | None,
                     since: datetime | None, until: datetime | None, as_json: bool) -> None:
    """Run stored events through the pipeline again (idempotent: nothing is stored twice)."""
    filters = stored.Filters(ids=ids, status=status, tenant=tenant, since=since, until=until)
    if not filters.any():
        raise click.UsageError("name event ids or give at least one of --status, --tenant, --since, --until")
    rt = maintenance_runtime("intake events reprocess")
    ensure(rt.resolved())
    from workers.actors import ingest_events

    engine = admin_engine(rt)
    with progress() as bar, engine.begin() as conn:
        task = bar.add_task("enqueueing", total=None)

        def send(tenant_id: uuid.UUID, event_ids: list[str]) -> None:
            ingest_events.send(str(tenant_id), event_ids, retry_failed=True)
            bar.advance(task, len(event_ids))

        sent = stored.reprocess(conn, filters, send)
    engine.dispose()
    if as_json:
        emit({"reprocessing": sent})
    else:
        out.print(f"sent {sent} events to the ingest queue")
