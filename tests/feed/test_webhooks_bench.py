"""The feed's bench phases at a tiny size on the test stack: a backlog delivered with its rate and CPU, and
the acknowledgement-to-receiver latency of `message.received` (recorded here as the ingest records it, in the
transaction that stores the message); and `intake bench --feed` as a user runs it, on its own stack."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from tests.deployment.test_bench import bench
from tests.factories import new_inbox
from workers.bench import feed
from workers.bench.stack import Stack
from workers.cli.bench import feed_report
from workers.cli.main import main

pytestmark = pytest.mark.services  # starts services of its own: never `offline`


def bench_stack(stack: dict[str, str]) -> Stack:
    return Stack(stack["DATABASE_URL"], stack["INTAKE_ADMIN_DATABASE_URL"], stack["REDIS_URL"],
                 stack["INTAKE_SECRET_KEY"], Path(stack["INTAKE_HOME"]),
                 {**os.environ, "INTAKE_WORKER_METRICS_PORT": "0", "INTAKE_WEBHOOK_SWEEP_SECONDS": "0.5"})


def test_the_feed_bench_measures_rate_cpu_and_latency(stack: dict[str, str], app_engine: Engine) -> None:
    bench = bench_stack(stack)
    inboxes = [new_inbox(app_engine, "api", tenant_name=f"Feed bench {n}") for n in range(2)]
    tenants = [TenantId(i.tenant_id) for i in inboxes]
    with bench.admin() as conn:
        done = feed.throughput(bench, conn, tenants, 400, processes=1, threads=8, progress=lambda *a: None)
    assert done["delivered"] == 400 and done["events_per_s"] > 0
    assert done["cpu_ms_per_event"]["deliver"] > 0
    assert done["cpu_ms_per_event_total"] >= done["cpu_ms_per_event"]["deliver"]
    with bench.admin() as conn:  # the phase's endpoints are off again: the next phase's receiver alone gets events
        assert conn.execute("SELECT count(*) FROM webhook_endpoints WHERE enabled AND tenant_id = ANY(%s)",
                            (tenants,)).fetchone() == (0,)

    def send() -> dict[str, float]:
        """Messages stored with their message.received, as the ingest stores them, each acknowledged (here:
        its commit) at a time the bench measures from."""
        acked: dict[str, float] = {}
        for inbox in inboxes:
            externals = [uuid.uuid4().hex for _ in range(10)]
            with app_engine.begin() as conn:
                bind_tenant(conn, inbox.tenant_id)
                contact = conn.execute(text("INSERT INTO contacts (tenant_id) VALUES (:t) RETURNING id"),
                                       {"t": inbox.tenant_id}).scalar_one()
                conversation = conn.execute(text(
                    "INSERT INTO conversations (tenant_id, inbox_id, contact_id) VALUES (:t, :i, :c) RETURNING id"),
                    {"t": inbox.tenant_id, "i": inbox.id, "c": contact}).scalar_one()
                stored = [conn.execute(text(
                    "INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, direction, external_id, "
                    "content, sent_at) VALUES (:t, :i, :v, :c, 'inbound', :x, 'hi', :now) RETURNING id"),
                    {"t": inbox.tenant_id, "i": inbox.id, "v": conversation, "c": contact, "x": external,
                     "now": datetime.now(UTC)}).scalar_one() for external in externals]
                changes.record(conn, inbox.tenant_id, [changes.Change(
                    "message.received", {"message": {"id": str(m), "conversation_id": str(conversation)}},
                    conversation_id=conversation, subject_id=m) for m in stored])
                acked |= {f"{inbox.id}:{x}": time.time() for x in externals}  # just before the commit
        return acked

    with bench.admin() as conn:
        measured = feed.latency(bench, conn, tenants, send, processes=1, threads=8, progress=lambda *a: None)
    assert measured["messages"] == measured["delivered"] == 20
    assert 0 < measured["p50_ms"] <= measured["p99_ms"] < 30_000



def test_bench_feed_measures_the_feed_against_the_pipeline_and_keeps_the_books(short_tmp: Path) -> None:
    r = bench(short_tmp, "--feed", "--events", "200", "--tenants", "2")
    assert r["pipeline"]["messages_per_s"] > 0 and r["correct"]["lost"] == 0 and r["correct"]["duplicates"] == 0
    throughput, latency = r["feed"]["throughput"], r["feed"]["latency"]
    assert throughput["delivered"] == 200 and throughput["cpu_ms_per_event"]["deliver"] > 0
    assert r["feed"]["keeps_up"] == (throughput["events_per_s"] >= r["pipeline"]["messages_per_s"])
    assert latency["delivered"] == latency["messages"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["stored_to_receiver_p50_ms"] is not None
    assert "ai" not in r and "e2e" not in r  # only what the feed is measured against
    shown = Console(width=200, record=True)
    shown.print(feed_report(r))
    text = shown.export_text()
    assert "keeps up" in text and "ack to receiver" in text


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", "0", "-5", "1e9", "1,5", "", "7\x00", "x" * 5000])
def test_the_feed_rate_is_refused_unless_a_sensible_number(value: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--feed", "--feed-rate", value])
    assert result.exit_code == 2
    assert "Invalid value for '--feed-rate'" in result.output
