"""The overview: how the fleet is doing now and over the last hour, refreshed every few seconds.

Queue figures come from Redis (dramatiq's own keys: the waiting list, the message hash, the dead set and
the workers' heartbeats) and are fleet-wide, so only operator keys see them. The rest comes from the
database in one read-only transaction, bound like every other call (a tenant key sees its tenant's).
Each query rides an index: events by (status, received_at), classifications through the messages stored
in the last two hours (a BRIN on stored_at), failures by (status, last_failed_at).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, text
from starlette.responses import Response
from starlette.routing import Route

from workers.admin.console.web import Console, Visit, page
from workers.broker import ensure
from workers.queues import NAMESPACE, QUEUES

MINUTES = 60
STUCK_AFTER = timedelta(minutes=5)
CHART_WIDTH, CHART_HEIGHT = 300, 48


@dataclass(frozen=True)
class QueueFigure:
    name: str
    waiting: int
    pending: int  # waiting, or held by a worker (running, or delayed until its time)
    oldest_seconds: float | None
    dead: int | None


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    minute: str
    value: int


def chart(values: list[int]) -> list[Bar]:
    """One bar per minute, scaled to the busiest minute (an empty hour draws nothing)."""
    top = max(values, default=0) or 1
    step = CHART_WIDTH / max(len(values), 1)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    bars = []
    for i, value in enumerate(values):
        height = CHART_HEIGHT * value / top
        minute = (now - timedelta(minutes=len(values) - 1 - i)).strftime("%H:%M")
        bars.append(Bar(round(i * step, 2), round(CHART_HEIGHT - height, 2), round(step * 0.8, 2),
                        round(height, 2), minute, value))
    return bars


def queue_figures(client: Any, heartbeat_ms: int) -> tuple[list[QueueFigure], int]:
    """Every queue and its delay queue, and how many worker processes sent a heartbeat lately."""
    now_ms = time.time() * 1000
    names = [n for q in QUEUES for n in (q, f"{q}.DQ")]
    pipe = client.pipeline(transaction=False)
    for name in names:
        key = f"{NAMESPACE}:{name}"
        pipe.llen(key)
        pipe.hlen(f"{key}.msgs")
        pipe.lindex(key, 0)
        pipe.zcard(f"{key}.XQ")
    pipe.zcount(f"{NAMESPACE}:__heartbeats__", now_ms - heartbeat_ms, "+inf")
    answers = pipe.execute()
    oldest_ids = [answers[i * 4 + 2] for i in range(len(names))]
    pipe = client.pipeline(transaction=False)
    for name, first in zip(names, oldest_ids, strict=True):
        pipe.hget(f"{NAMESPACE}:{name}.msgs", first or b"-")
    bodies = pipe.execute()
    figures = []
    for i, name in enumerate(names):
        waiting, pending, _, dead = answers[i * 4: i * 4 + 4]
        figures.append(QueueFigure(name, int(waiting), int(pending), _age(bodies[i], now_ms),
                                   None if name.endswith(".DQ") else int(dead)))
    return figures, int(answers[-1])


def _age(body: bytes | None, now_ms: float) -> float | None:
    if not body:
        return None
    try:
        stamp = orjson.loads(body)["message_timestamp"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return max(0.0, (now_ms - float(stamp)) / 1000)


def per_minute(rows: list[Any], since: datetime) -> list[int]:
    counts = [0] * MINUTES
    for minute, count in rows:
        index = int((minute - since).total_seconds() // 60)
        if 0 <= index < MINUTES:
            counts[index] += int(count)
    return counts


def database_figures(conn: Connection) -> dict[str, Any]:
    now = conn.execute(text("SELECT date_trunc('minute', now())")).scalar_one()
    since = now - timedelta(minutes=MINUTES - 1)
    events = conn.execute(text(
        "SELECT date_trunc('minute', received_at) AS minute, channel, status, count(*) FROM inbound_events "
        "WHERE status = ANY(:statuses) AND received_at >= :since GROUP BY 1, 2, 3"),
        {"statuses": ["received", "queued", "processed", "failed"], "since": since}).all()
    classified = conn.execute(text(
        "SELECT date_trunc('minute', c.created_at), count(*) FROM messages m "
        "JOIN ai_classifications c ON c.tenant_id = m.tenant_id AND c.message_id = m.id "
        "WHERE m.stored_at >= :since - interval '1 hour' AND c.created_at >= :since GROUP BY 1"),
        {"since": since}).all()
    latency = conn.execute(text(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) "
        "FROM inbound_events WHERE status = 'processed' AND received_at >= :since"), {"since": since}).one()
    stuck = conn.execute(text(
        "SELECT count(*), min(received_at) FROM inbound_events WHERE status = 'received' "
        "AND received_at < now() - :grace"), {"grace": STUCK_AFTER}).one()
    dead = conn.execute(text("SELECT count(*) FROM job_failures WHERE status = 'dead'")).scalar_one()
    outcomes: dict[tuple[str, str], int] = {}
    for _, channel, status, count in events:
        outcomes[(channel, status)] = outcomes.get((channel, status), 0) + int(count)
    failed = [row for row in events if row[2] == "failed"]
    return {
        "ingested": per_minute([(m, c) for m, _, _, c in events], since),
        "failed": per_minute([(m, c) for m, _, _, c in failed], since),
        "classified": per_minute(list(classified), since),
        "outcomes": sorted(outcomes.items()),
        "p50": latency[0], "p99": latency[1],
        "stuck": int(stuck[0]), "stuck_since": stuck[1], "dead": int(dead),
    }


def figures(visit: Visit) -> dict[str, Any]:
    with visit.call().transaction() as conn:
        db = database_figures(conn)
    queues, workers = None, None
    if visit.principal.operator:
        settings = visit.admin.settings
        queues, workers = queue_figures(ensure(settings).client, settings.heartbeat_timeout_ms)
    return {**db, "queues": queues, "workers": workers, "chart": chart, "height": CHART_HEIGHT,
            "width": CHART_WIDTH, "updated": datetime.now(UTC)}


def overview_page(visit: Visit) -> Response:
    return visit.render("overview.html", title="Overview", **figures(visit))


def live_fragment(visit: Visit) -> Response:
    return visit.fragment("overview_live.html", **figures(visit))


def routes(console: Console) -> list[Route]:
    return [Route("/", page(console, overview_page), methods=["GET"]),
            Route("/overview/live", page(console, live_fragment, fragment=True), methods=["GET"])]
