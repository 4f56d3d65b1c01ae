"""`intake bench`: measure the fleet against baselines taken in the same run; `--scale`: how it grows."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import get_settings
from workers.cli.common import console, emit, friendly_errors, out


def _counts(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, ...]:
    """A comma-separated list of counts (1,100,2000 or 1_000_000), checked before anything starts."""
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 0 or len(values) > 10 or max(values) > 100_000_000:
        raise click.BadParameter("give one to ten numbers from 0 to 100,000,000")
    if param.name == "scale_tenants" and min(values) < 1:
        raise click.BadParameter("every tenant count is at least 1")
    return values


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A rate that is a number (a range check lets NaN through: it compares false with both ends)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter("give a number of deliveries a second")
    return value


@click.command()
@click.option("--events", type=click.IntRange(100, 10_000_000), default=20_000, show_default=True,
              help="Deliveries to post (about 10% are provider retries).")
@click.option("--tenants", type=click.IntRange(1, 100_000), default=4, show_default=True)
@click.option("--processes", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Processes of each worker command.")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Threads per process.")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Client connections.")
@click.option("--web-processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="`intake serve` processes, the client's connections spread over them.")
@click.option("--worker-processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="`intake worker` commands per queue (each with --processes and --threads).")
@click.option("--ai-seconds", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Longest the AI workers run alone on the stored messages.")
@click.option("--lone-messages", type=click.IntRange(1, 1000), default=12, show_default=True,
              help="Deliveries sent one at a time, each after a second without traffic.")
@click.option("--scale", is_flag=True, help="Measure how the pipeline grows with tenants and stored messages.")
@click.option("--scale-tenants", default="1,100,2000", show_default=True, callback=_counts,
              help="--scale: tenant counts.")
@click.option("--scale-stored", default="0,1000000,5000000", show_default=True, callback=_counts,
              help="--scale: messages already stored.")
@click.option("--scale-repeats", type=click.IntRange(1, 5), default=2, show_default=True,
              help="--scale: attempts at each point (post and drain); the cheapest per message is reported.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=Path("intake-bench-scale.png"),
              show_default=True, help="--scale: where the PNG chart goes.")
@click.option("--outbound", is_flag=True,
              help="Measure replies sent through the outbound queue to a local fake provider instead.")
@click.option("--outbound-replies", type=click.IntRange(10, 1_000_000), default=2000, show_default=True,
              help="--outbound: replies in the burst (a tenth as many more are paced for latency).")
@click.option("--feed", is_flag=True,
              help="Measure only the change feed's webhooks against the pipeline's rate: the ingress and the "
                   "ingest drain, then a backlog delivered to a local receiver and acknowledgement-to-receiver "
                   "latency.")
@click.option("--feed-rate", type=click.FloatRange(1, 100_000), default=None, callback=_finite,
              help="Pace the feed's latency phase at this many deliveries a second instead of half the lower peak "
                   "(to compare runs at one rate).")
@click.option("--db-rtt-ms", type=click.FloatRange(0, 1000), default=None, callback=_finite,
              help="Put a network between the fleet and PostgreSQL: a relay the bench starts, delaying each "
                   "direction by half this round trip, and report round trips per ingest job (0 counts them "
                   "without a delay).")
@click.option("--redis-rtt-ms", type=click.FloatRange(0, 1000), default=None, callback=_finite,
              help="The same between the fleet and Redis.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def bench(events: int, tenants: int, processes: int, threads: int, concurrency: int, web_processes: int,
          worker_processes: int, ai_seconds: float, lone_messages: int, scale: bool, scale_tenants: tuple[int, ...],
          scale_stored: tuple[int, ...], scale_repeats: int, chart: Path, outbound: bool, outbound_replies: int,
          feed: bool, feed_rate: float | None, db_rtt_ms: float | None, redis_rtt_ms: float | None,
          as_json: bool) -> None:
    """Run the fleet on a fresh embedded stack (or DATABASE_URL/REDIS_URL) and compare it with its ceilings.

    With --scale, measure the pipeline and end-to-end latency with more tenants and larger tables instead
    (--events defaults to 10,000 per point then; about seven minutes on two cores) and draw a chart. With
    --outbound, measure replies per second through the outbound queue and enqueue-to-provider latency. With
    --feed, measure the change feed's webhooks (delivery rate against the pipeline's, latency, CPU) alone.
    With --db-rtt-ms / --redis-rtt-ms, the fleet reaches that service through a relay that adds the round
    trip (the bench's own sessions do not), and the pipeline's round trips per job and per message are reported.
    """
    settings = get_settings()
    urls: dict[str, Any] = {"database_url": settings.database_url,
                            "admin_database_url": settings.admin_database_url, "redis_url": settings.redis_url}
    if outbound:
        from workers.bench.outbound import OutboundOptions, run_outbound

        outbound_options = OutboundOptions(replies=outbound_replies, paced=max(10, outbound_replies // 10),
                                           tenants=tenants, processes=processes, threads=threads, **urls)
        _show(_with_progress(lambda progress: run_outbound(outbound_options, progress)), as_json, outbound_report)
        return
    if scale:
        from workers.bench.scale import ScaleOptions, run_scale

        try:  # checked first: the chart is drawn minutes later
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError("--scale draws its chart with matplotlib: pip install 'intake[bench]'") from None

        explicit = click.get_current_context().get_parameter_source("events") is click.core.ParameterSource.COMMANDLINE
        scale_options = ScaleOptions(tenants=scale_tenants, stored=scale_stored, repeats=scale_repeats,
                                     events=events if explicit else 10_000, processes=processes, threads=threads,
                                     concurrency=concurrency, chart=chart, db_rtt_ms=db_rtt_ms,
                                     redis_rtt_ms=redis_rtt_ms, **urls)
        results = _with_progress(lambda progress: run_scale(scale_options, progress))
        _show(results, as_json, scale_report)
        return
    from workers.bench.options import BenchOptions
    from workers.bench.run import run, run_feed

    options = BenchOptions(events=events, tenants=tenants, processes=processes, threads=threads,
                           concurrency=concurrency, web_processes=web_processes,
                           worker_processes=worker_processes, ai_seconds=ai_seconds, lone_messages=lone_messages,
                           feed_rate=feed_rate, db_rtt_ms=db_rtt_ms, redis_rtt_ms=redis_rtt_ms, **urls)
    if feed:
        _show(_with_progress(lambda progress: run_feed(options, progress)), as_json, feed_report)
        return
    results = _with_progress(lambda progress: run(options, progress))
    _show(results, as_json, report)


def _show(results: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], Table]) -> None:
    if as_json:
        emit(results)
    else:
        out.print(table(results))


def _with_progress(job: Callable[[Callable[[str, float | None], None]], dict[str, Any]]) -> dict[str, Any]:
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task: TaskID = bar.add_task("starting", total=1.0)

        def progress(description: str, fraction: float | None) -> None:
            bar.update(task, description=description, completed=fraction if fraction is not None else 0.0)

        return job(progress)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def outbound_report(r: dict[str, Any]) -> Table:
    table = Table(title="intake bench --outbound (local fake provider)")
    table.add_column("measure", justify="left")
    table.add_column("value", justify="right")
    table.add_row(f"replies/s ({r['processes']} processes x {r['threads']} threads)", f"{r['replies_per_s']:,.1f}")
    table.add_row(f"enqueue to provider p50 / p99 ms at {r['paced_rate_per_s']:,.1f}/s",
                  f"{r['enqueue_to_provider_p50_ms']} / {r['enqueue_to_provider_p99_ms']}")
    table.add_row("sent, provider requests, duplicates, lost",
                  f"{r['sent']}, {r['provider_requests']}, {r['duplicates']}, {r['lost']}")
    return table


def feed_report(r: dict[str, Any]) -> Table:
    table = Table(title="intake bench --feed (local receiver)")
    table.add_column("measure", justify="left")
    table.add_column("value", justify="right")
    p, ft, fl = r["pipeline"], r["feed"]["throughput"], r["feed"]["latency"]
    table.add_row("pipeline messages/s (the rate to keep up with)", f"{p['messages_per_s']:,.1f}")
    table.add_row(f"webhook events delivered/s ({ft['events']:,} events)", f"{ft['events_per_s']}")
    table.add_row("keeps up", "yes" if r["feed"]["keeps_up"] else "no")
    cpu = ft["cpu_ms_per_event"]
    table.add_row("CPU ms per delivered event: deliver / PostgreSQL / Redis / all",
                  f"{_ms(cpu.get('deliver'))} / {_ms(cpu.get('postgres'))} / {_ms(cpu.get('redis'))} / "
                  f"{_ms(ft['cpu_ms_per_event_total'])}")
    table.add_row(f"ack to receiver p50 / p99 ms at {fl['rate_per_s']:,.1f}/s",
                  f"{fl['p50_ms']} / {fl['p99_ms']} ({fl['delivered']:,} of {fl['messages']:,})")
    table.add_row("  of which stored to receiver p50 / p99 ms",
                  f"{fl.get('stored_to_receiver_p50_ms')} / {fl.get('stored_to_receiver_p99_ms')}")
    table.add_row("load average at start, end", ", ".join(str(v) for v in r["load_average"]))
    c = r["correct"]
    table.add_row("duplicates, lost", f"{c['duplicates']}, {c['lost']}")
    return table


def report(r: dict[str, Any]) -> Table:
    table = Table(title="intake bench", show_lines=False)
    table.add_column("measure", justify="left")
    for name in ("fleet", "baseline", "ratio"):
        table.add_column(name, justify="right")
    b, i, p, a = r["baseline"], r["ingress"], r["pipeline"], r["ai"]
    table.add_row("ingress accepted/s", f"{i['accepted_per_s']:,.0f}", f"{b['hello_asgi_per_s']:,.0f} (hello ASGI)",
                  f"{r['ratio']['ingress_vs_hello']}")
    table.add_row("ingress p50 / p99 ms", f"{i['p50_ms']} / {i['p99_ms']}",
                  f"{b['hello_p50_ms']} / {b['hello_p99_ms']}", "")
    table.add_row("web CPU ms per delivery", _ms(i["cpu_ms_per_delivery"].get("web")),
                  f"{_ms(b['hello_cpu_ms_per_request'])} (hello)", f"{r['ratio']['web_cpu_vs_hello']}")
    table.add_row("pipeline messages/s", f"{p['messages_per_s']:,.0f}",
                  f"{b['dramatiq_noop_per_s']:,.0f} (no-op jobs)", f"{r['ratio']['pipeline_vs_noop']}")
    table.add_row("ingest worker CPU ms per message", _ms(p["cpu_ms_per_message"].get("worker")),
                  f"{_ms(b['noop_cpu_ms_per_job'])} (no-op)", "")
    if "network" in p:
        table.add_row(*_network_row(p["network"]), "", "")
    table.add_row("ai messages/s, worker CPU ms per message",
                  f"{a['messages_per_s']}, {_ms(a['cpu_ms_per_message'].get('worker_ai'))}",
                  f"({a['provider']} provider)", "")
    for phase, label, key in ((i, "delivery", "cpu_ms_per_delivery"), (p, "stored message", "cpu_ms_per_message"),
                              (a, "classified message", "cpu_ms_per_message")):
        table.add_row(f"PostgreSQL / Redis CPU ms per {label}",
                      f"{_ms(phase[key].get('postgres'))} / {_ms(phase[key].get('redis'))}", "", "")
    e, lone = r["e2e"], r["lone"]
    table.add_row(f"end to end p50 / p99 ms at {e['rate_per_s']:,.0f}/s, AI running",
                  f"{e['p50_ms']} / {e['p99_ms']}", f"{e['ai_classified_meanwhile']:,} classified meanwhile", "")
    table.add_row(f"lone message p50 / p99 ms ({lone['quiet_seconds']} s quiet)",
                  f"{lone['p50_ms']} / {lone['p99_ms']}", "", "")
    if "feed" in r:
        ft, fl = r["feed"]["throughput"], r["feed"]["latency"]
        table.add_row("webhook events delivered/s, deliver CPU ms per event",
                      f"{ft['events_per_s']}, {_ms(ft['cpu_ms_per_event'].get('deliver'))}",
                      f"{p['messages_per_s']:,.0f} (pipeline messages/s)", "")
        table.add_row(f"ack to message.received p50 / p99 ms at {fl['rate_per_s']:,.0f}/s",
                      f"{fl['p50_ms']} / {fl['p99_ms']}", f"{fl['delivered']:,} of {fl['messages']:,} delivered", "")
    table.add_row("PostgreSQL commits/s, COPY rows/s", "",
                  f"{b['pg_commit_per_s']:,.0f}, {b['pg_copy_rows_per_s']:,.0f}", "")
    rss = r["rss_mb"]
    table.add_row("peak RSS MB web / worker / ai worker", f"{rss['web']} / {rss['worker']} / {rss['worker_ai']}",
                  "", "")
    sizing = r["sizing_cores_per_1000_per_s"]
    table.add_row("cores per 1,000 messages/s", f"{sizing['total']}",
                  " ".join(f"{k} {v}" for k, v in sizing.items() if k != "total"), "")
    c = r["correct"]
    table.add_row("deliveries, events, messages", f"{c['deliveries_sent']:,}, {c['events_stored']:,}, "
                  f"{c['messages_stored']:,}", f"expected {c['messages_expected']:,} messages", "")
    table.add_row("duplicates, lost", f"{c['duplicates']}, {c['lost']}", "", "")
    return table


def _network_row(network: dict[str, Any]) -> tuple[str, str]:
    """(label, value) of the pipeline's round trips through the relays: per job (PostgreSQL) and per message."""
    parts, labels = [], []
    if "db" in network:
        db = network["db"]
        labels.append(f"PostgreSQL per job / per message ({db['rtt_ms']:g} ms)")
        parts.append(f"{db['round_trips_per_transaction']} / {db['round_trips_per_message']}")
    if "redis" in network:
        labels.append(f"Redis per message ({network['redis']['rtt_ms']:g} ms)")
        parts.append(f"{network['redis']['round_trips_per_message']}")
    return "pipeline round trips: " + ", ".join(labels), ", ".join(parts)


def scale_report(r: dict[str, Any]) -> Table:
    table = Table(title=f"intake bench --scale (chart: {r['chart']})")
    networked = any("network" in point["pipeline"] for point in r["points"])
    columns = ("tenants", "stored", "pipeline msg/s", "worker ms/msg", "postgres ms/msg", "total ms/msg",
               "e2e p50 / p99 ms", *(("DB round trips per job",) if networked else ()), "dup, lost")
    for name in columns:
        table.add_column(name, justify="right")
    for point in r["points"]:
        cpu = point["pipeline"]["cpu_ms_per_message"]
        trips = point["pipeline"].get("network", {}).get("db", {}).get("round_trips_per_transaction")
        table.add_row(f"{point['tenants']:,}", f"{point['stored']:,}", f"{point['pipeline']['messages_per_s']:,.0f}",
                      _ms(cpu.get("worker")), _ms(cpu.get("postgres")), _ms(point["pipeline_cpu_ms_per_message"]),
                      f"{point['e2e']['p50_ms']} / {point['e2e']['p99_ms']}", *((str(trips),) if networked else ()),
                      f"{point['correct']['duplicates']}, {point['correct']['lost']}")
    return table
