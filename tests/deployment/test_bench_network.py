"""The bench's network (`--db-rtt-ms`, `--redis-rtt-ms`): the relay really delays each round trip, counts the
turns and PostgreSQL's transactions, and a bench run through it keeps the books."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from click.testing import CliRunner

from tests.deployment.test_bench import own_stack
from tests.processes import INTAKE
from workers.bench.relay import Route, relay
from workers.bench.stack import database_upstream, redis_upstream, relayed_database_url, relayed_redis_url
from workers.cli.main import main


@pytest.fixture
def echo() -> Iterator[str]:
    """A TCP server on this machine that answers each chunk with the same bytes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def round_trip(sock: socket.socket, payload: bytes) -> float:
    """Seconds from sending `payload` to having it all back."""
    started = time.perf_counter()
    sock.sendall(payload)
    back = b""
    while len(back) < len(payload):
        back += sock.recv(65536)
    assert back == payload
    return time.perf_counter() - started


def test_each_round_trip_through_the_relay_takes_at_least_its_delay(echo: str) -> None:
    with relay([Route("echo", echo)], delay_ms=30) as running:
        with socket.create_connection(("127.0.0.1", running.ports["echo"])) as sock:
            times = [round_trip(sock, f"ping {n}".encode()) for n in range(5)]
            big = round_trip(sock, bytes(range(256)) * 4096)  # a megabyte, in many chunks: still one wait
        counts = running.counts("echo")
    assert min(times) >= 0.030
    assert big >= 0.030
    assert (counts.round_trips, counts.connections) == (6, 1)


def test_without_a_delay_the_relay_only_counts(echo: str) -> None:
    with relay([Route("a", echo), Route("b", echo)], delay_ms=0) as running:
        with socket.create_connection(("127.0.0.1", running.ports["b"])) as sock:
            times = [round_trip(sock, b"x") for _ in range(20)]
        assert sorted(times)[10] < 0.010
        assert running.counts("b").round_trips == 20
        assert running.counts("a").round_trips == 0


def test_postgres_through_the_relay_pays_the_delay_per_statement_and_counts_transactions(
        stack: dict[str, str]) -> None:
    url = stack["DATABASE_URL"]
    with relay([Route("db", database_upstream(url), postgres=True)], delay_ms=20) as running:
        with psycopg.connect(relayed_database_url(url, running.ports["db"])) as conn:
            for _ in range(3):
                with conn.transaction():
                    started = time.perf_counter()
                    conn.execute("SELECT 1").fetchone()
                    assert time.perf_counter() - started >= 0.020
            before = running.counts("db")
            conn.rollback()  # nothing open: psycopg sends nothing
            conn.execute("SELECT 2").fetchone()  # opens a transaction: BEGIN, then the statement
            conn.commit()
            after = running.counts("db")
    assert before.transactions == 3
    assert after.transactions - before.transactions == 1
    assert after.round_trips - before.round_trips == 3  # BEGIN, SELECT, COMMIT


def test_redis_through_the_relay_pays_the_delay(stack: dict[str, str]) -> None:
    url = stack["REDIS_URL"]
    with relay([Route("redis", redis_upstream(url))], delay_ms=20) as running:
        client = redis.Redis.from_url(relayed_redis_url(url, running.ports["redis"]))
        client.ping()
        started = time.perf_counter()
        client.set("intake:test:relay", "1")
        assert client.get("intake:test:relay") == b"1"
        assert time.perf_counter() - started >= 0.040
        client.close()


@pytest.mark.services
def test_bench_through_a_network_keeps_the_books_and_counts_a_job_s_round_trips(short_tmp: Path) -> None:
    # The shortest bench that has both a pipeline and an end-to-end phase: one --scale point.
    done = subprocess.run([INTAKE, "bench", "--scale", "--events", "150", "--scale-tenants", "2", "--scale-stored", "0",
                           "--scale-repeats", "1", "--chart", str(short_tmp / "chart.png"), "--processes", "1",
                           "--threads", "4", "--db-rtt-ms", "1", "--redis-rtt-ms", "0.5", "--json"],
                          env=own_stack(short_tmp), capture_output=True, timeout=300, check=True)
    (point,) = json.loads(done.stdout)["points"]
    books = point["correct"]
    assert books["lost"] == 0 and books["duplicates"] == 0 and books["events_unprocessed"] == 0
    assert books["messages_stored"] == books["messages_expected"] > 0
    db, cache = point["pipeline"]["network"]["db"], point["pipeline"]["network"]["redis"]
    assert db["rtt_ms"] == 1 and cache["rtt_ms"] == 0.5
    assert db["transactions"] > 0 and db["round_trips_per_transaction"] >= 3  # at least BEGIN, a statement, COMMIT
    assert db["round_trips_per_message"] > 0 and cache["round_trips_per_message"] > 0
    assert point["e2e"]["network"]["db"]["round_trips"] > 0


@pytest.mark.parametrize("value", ["-1", "nan", "abc", "1001", "1\x00", "x" * 5000, "inf"])
@pytest.mark.parametrize("option", ["--db-rtt-ms", "--redis-rtt-ms"])
def test_bench_refuses_a_round_trip_that_is_not_a_delay(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["bench", option, value])
    assert result.exit_code == 2
    assert "Invalid value" in result.output
