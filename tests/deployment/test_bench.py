"""`intake bench` at a tiny size: the report has its shape, every figure its CPU cost, and the books balance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.processes import INTAKE
from workers.cli.main import main

pytestmark = pytest.mark.services  # starts services of its own: never `offline`

PNG = b"\x89PNG\r\n\x1a\n"


def own_stack(home: Path) -> dict[str, str]:
    """The environment of a bench that starts its own embedded stack under `home` (a `short_tmp`: its PostgreSQL
    socket lies a few directories further down), not the tests' one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "INTAKE_ADMIN_DATABASE_URL", "INTAKE_SECRET_KEY")}
    return env | {"TMPDIR": str(home)}


def bench(home: Path, *args: str) -> dict[str, Any]:
    """`intake bench ... --json` on its own embedded stack under `home`, as a user would run it."""
    done = subprocess.run([INTAKE, "bench", *args, "--processes", "1", "--threads", "4", "--json"],
                          env=own_stack(home), capture_output=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_scale_bench_draws_its_chart_and_keeps_the_books(short_tmp: Path) -> None:
    chart = short_tmp / "scale.png"
    r = bench(short_tmp, "--scale", "--events", "150", "--scale-tenants", "2", "--scale-stored", "0,1500",
              "--scale-repeats", "2", "--chart", str(chart))
    points = r["points"]
    assert [(p["tenants"], p["stored"]) for p in points] == [(2, 0), (2, 1500)]
    for p in points:
        assert p["correct"]["lost"] == 0 and p["correct"]["duplicates"] == 0
        assert p["correct"]["messages_stored"] == p["correct"]["messages_expected"] > 0
        assert p["messages_in_table"] >= p["stored"]
        assert p["pipeline"]["cpu_ms_per_message"]["worker"] > 0
        assert p["e2e"]["p99_ms"] >= p["e2e"]["p50_ms"] > 0
        # two attempts posted and drained (the books count both), the cheapest of each phase reported
        assert p["correct"]["events_stored"] >= 2 * 150 * 0.8
        costs = [a["pipeline_cpu_ms_per_message"] for a in p["attempts"]]
        assert len(costs) == 2 and p["pipeline_cpu_ms_per_message"] == min(costs) > 0
        assert p["ingress_cpu_ms_per_delivery"] == min(a["ingress_cpu_ms_per_delivery"] for a in p["attempts"])
    assert set(r["flatness"]["pipeline_cpu_ms_per_message"]) == {"1500"}
    assert chart.read_bytes().startswith(PNG)


def test_bench_reports_cpu_per_message_and_keeps_the_books(short_tmp: Path) -> None:
    r = bench(short_tmp, "--events", "200", "--tenants", "2", "--ai-seconds", "1", "--lone-messages", "1")
    books = r["correct"]
    assert books["lost"] == 0 and books["duplicates"] == 0 and books["events_unprocessed"] == 0
    assert books["messages_stored"] == books["messages_expected"] > 0
    ingress, baseline = r["ingress"], r["baseline"]
    assert set(ingress["cpu_ms_per_delivery"]) >= {"web", "postgres", "redis"}
    assert ingress["cpu_ms_per_delivery"]["web"] > 0 and baseline["hello_cpu_ms_per_request"] > 0
    assert baseline["noop_cpu_ms_per_job"] > 0
    assert r["pipeline"]["cpu_ms_per_message"]["worker"] > 0
    assert r["lone"]["messages"] == 1
    sizing = r["sizing_cores_per_1000_per_s"]
    assert sizing["total"] > 0
    assert {"web", "ingest_worker", "ai_worker", "postgres", "redis"} <= set(sizing)


@pytest.mark.parametrize("args", [
    ["--scale-tenants", "1,abc"], ["--scale-tenants", "0,5"], ["--scale-stored", "-1"],
    ["--scale-stored", "1" * 5000], ["--scale-tenants", "1\x00,2"], ["--scale-stored", ""],
    ["--scale-stored", ",".join(["1"] * 11)], ["--web-processes", "0"], ["--events", "10"],
    ["--scale-repeats", "0"], ["--scale-repeats", "6"], ["--scale-repeats", "2\x00"], ["--scale-repeats", "x" * 5000],
])
def test_bench_refuses_bad_options_before_starting_anything(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["bench", "--scale", *args])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_outbound_bench_sends_every_reply_once_and_times_them(short_tmp: Path) -> None:
    r = bench(short_tmp, "--outbound", "--outbound-replies", "30", "--tenants", "2")
    assert (r["sent"], r["provider_requests"], r["duplicates"], r["lost"]) == (40, 40, 0, 0)
    assert r["replies_per_s"] > 0 and r["paced_replies"] == 10
    assert r["enqueue_to_provider_p99_ms"] >= r["enqueue_to_provider_p50_ms"] > 0


@pytest.mark.parametrize("args", [["--outbound-replies", "0"], ["--outbound-replies", "1\x00"],
                                  ["--outbound-replies", "x" * 5000], ["--outbound-replies", "-5"]])
def test_outbound_bench_refuses_bad_options(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["bench", "--outbound", *args])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def ingress_cpu(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m workers.bench.ingress_cpu ...` on its own embedded stack under `home`."""
    return subprocess.run([sys.executable, "-m", "workers.bench.ingress_cpu", *args], env=own_stack(home),
                          capture_output=True, text=True, timeout=120)


def test_ingress_cpu_reports_each_group_with_and_without_the_door_s_steps(short_tmp: Path) -> None:
    done = ingress_cpu(short_tmp, "--events", "40", "--rounds", "1", "--groups", "mix,twilio",
                       "--without", "parse,verify")
    assert done.returncode == 0, done.stderr
    medians = done.stdout.strip().splitlines()[-1]
    assert medians.startswith("median CPU ms per delivery:")
    figures = dict(zip(medians.split()[5::2], (float(x) for x in medians.split()[6::2]), strict=True))
    assert set(figures) == {"hello", "mix", "twilio"} and all(v > 0 for v in figures.values())
    assert "unexpected answers" not in done.stdout


@pytest.mark.parametrize("steps", ["parse,commit", "parse;verify", "verify," * 2000 + "x", "ü"])
def test_ingress_cpu_refuses_a_step_it_cannot_leave_out(short_tmp: Path, steps: str) -> None:
    done = ingress_cpu(short_tmp, "--without", steps)
    assert done.returncode == 2
    assert "unknown steps" in done.stderr and "parse and verify can be left out" in done.stderr
