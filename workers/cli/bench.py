"""`intake bench`: measure the fleet against baselines taken in the same run."""

from __future__ import annotations

from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import get_settings
from workers.cli.common import console, emit, friendly_errors, out


@click.command()
@click.option("--events", type=click.IntRange(100), default=20_000, show_default=True,
              help="Deliveries to post (about 10% are provider retries).")
@click.option("--tenants", type=click.IntRange(1), default=4, show_default=True)
@click.option("--processes", type=click.IntRange(1), default=2, show_default=True, help="Worker processes.")
@click.option("--threads", type=click.IntRange(1), default=8, show_default=True, help="Threads per process.")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True, help="Client connections.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def bench(events: int, tenants: int, processes: int, threads: int, concurrency: int, as_json: bool) -> None:
    """Run the fleet on a fresh embedded stack (or DATABASE_URL/REDIS_URL) and compare it with its ceilings."""
    from workers.bench.run import BenchOptions, run

    settings = get_settings()
    options = BenchOptions(events=events, tenants=tenants, processes=processes, threads=threads,
                           concurrency=concurrency, database_url=settings.database_url,
                           admin_database_url=settings.admin_database_url, redis_url=settings.redis_url)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task: TaskID = bar.add_task("starting", total=1.0)

        def progress(description: str, fraction: float | None) -> None:
            bar.update(task, description=description, completed=fraction if fraction is not None else 0.0)

        results = run(options, progress)
    if as_json:
        emit(results)
    else:
        out.print(report(results))


def report(r: dict[str, Any]) -> Table:
    table = Table(title="intake bench", show_lines=False)
    table.add_column("measure")
    table.add_column("fleet", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("ingress accepted/s", f"{r['ingress']['accepted_per_s']:,.0f}",
                  f"{r['baseline']['hello_asgi_per_s']:,.0f} (hello ASGI)", f"{r['ratio']['ingress_vs_hello']}")
    table.add_row("ingress p50 / p99 ms", f"{r['ingress']['p50_ms']} / {r['ingress']['p99_ms']}",
                  f"{r['baseline']['hello_p50_ms']} / {r['baseline']['hello_p99_ms']}", "")
    table.add_row("pipeline messages/s", f"{r['pipeline']['messages_per_s']:,.0f}",
                  f"{r['baseline']['dramatiq_noop_per_s']:,.0f} (no-op jobs)", f"{r['ratio']['pipeline_vs_noop']}")
    table.add_row("ai messages/s", f"{r['ai']['messages_per_s']}", f"({r['ai']['provider']} provider)", "")
    table.add_row(f"end to end p50 / p99 ms at {r['e2e']['rate_per_s']:,.0f}/s",
                  f"{r['e2e']['p50_ms']} / {r['e2e']['p99_ms']}", "", "")
    table.add_row("PostgreSQL commits/s, COPY rows/s", "",
                  f"{r['baseline']['pg_commit_per_s']:,.0f}, {r['baseline']['pg_copy_rows_per_s']:,.0f}", "")
    table.add_row("peak RSS MB web / worker / ai worker",
                  f"{r['rss_mb']['web_peak']} / {r['rss_mb']['worker_peak']} / {r['rss_mb']['ai_worker_peak']}", "", "")
    c = r["correct"]
    table.add_row("deliveries, events, messages",
                  f"{c['deliveries_sent']:,}, {c['events_stored']:,}, {c['messages_stored']:,}",
                  f"expected {c['messages_expected']:,} messages", "")
    table.add_row("duplicates, lost", f"{c['duplicates']}, {c['lost']}", "", "")
    return table
