"""Redis through Sentinel: the primary dies mid-flow, the Sentinel promotes its replica, and the fleet follows.

Real `redis-server` processes (a primary, a replica, a Sentinel), a real `intake serve` and `intake worker`
given REDIS_SENTINELS instead of REDIS_URL. Deliveries posted before, during and after the failover are all
stored exactly once: the web and the workers follow the new primary without a restart, and the jobs that
died with the old primary are sent again by the clock's sweeper from the events PostgreSQL kept.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from config import SettingsError, load_settings
from tests.fleet import CorpusTenant, PostResult, post_all, settle
from tests.processes import INTAKE, wait_for, web_server, worker
from tests.sentinel import Topology, redis_with_sentinel

WORKER_ENV = {"INTAKE_HEARTBEAT_TIMEOUT_MS": "3000", "INTAKE_JOB_MIN_BACKOFF_MS": "100",
              "INTAKE_JOB_MAX_BACKOFF_MS": "2000"}


@pytest.fixture
def topology(stack: dict[str, str], tmp_path: Path) -> Iterator[Topology]:
    with redis_with_sentinel(tmp_path / "redis") as found:
        yield found


def sweep(env: dict[str, str]) -> dict[str, object]:
    """One run of the clock's sweeps (`intake clock --once`), through the Sentinels too."""
    done = subprocess.run([INTAKE, "clock", "--once", "--json"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_deliveries_before_during_and_after_a_failover_are_stored_exactly_once(
        stack: dict[str, str], app_engine: Engine, topology: Topology, tmp_path: Path) -> None:
    env = {**stack, **topology.env()}
    before, during, after = (CorpusTenant(app_engine, "US", 8, seed=401 + n) for n in range(3))
    web_env = {**env, "INTAKE_RATE_LIMIT_PER_SECOND": "100000", "INTAKE_RATE_LIMIT_BURST": "100000"}
    with web_server(web_env, log_path=tmp_path / "web.log") as base, \
            worker(processes=1, threads=4, env={**env, **WORKER_ENV}, queues=("ingest",)):
        assert set(asyncio.run(post_all(base, [before])).codes) == {200}
        settle([before], app_engine, timeout=60)

        # The primary dies while deliveries arrive; the provider retries what was refused, as providers do.
        result = PostResult()
        posting = threading.Thread(target=lambda: asyncio.run(
            post_all(base, [during], concurrency=4, retry_unavailable=True, result=result)))
        posting.start()
        wait_for(lambda: during.counts(app_engine)["messages"] > 0 or not posting.is_alive(), timeout=60,
                 interval=0.02)
        assert posting.is_alive(), "the posting ended before the kill: nothing was in flight"
        killed_at = time.monotonic()
        topology.kill(topology.primary)
        wait_for(lambda: topology.primary_port() == topology.replica, timeout=30, interval=0.1)
        failed_over = time.monotonic() - killed_at
        posting.join(120)
        assert set(result.codes) == {200}, result.transport_errors[:3]

        # After the failover: the web enqueues to the new primary and the worker consumes there, unrestarted.
        assert set(asyncio.run(post_all(base, [after])).codes) == {200}
        settle([after], app_engine, timeout=60)

        # What the old primary took with it comes back from PostgreSQL, through the sweeper.
        sweep_env = {**env, "INTAKE_SWEEP_GRACE_SECONDS": "0", "INTAKE_CLOCK_METRICS_PORT": "0"}

        swept = []

        def recovered() -> bool:
            if during.counts(app_engine)["unprocessed"] == 0:
                return True
            swept.append(int(str(sweep(sweep_env)["enqueued"])))
            return False

        wait_for(recovered, timeout=120, interval=1)
    for tenant in (before, during, after):
        assert tenant.counts(app_engine) == tenant.expected()
    print(f"\nfailover seen by the Sentinel {failed_over:.1f} s after the primary was killed; "
          f"{result.retries} retried deliveries; {sum(swept)} events re-sent by the sweeper")


def test_sentinel_settings_are_checked_and_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379, sentinel-b:26379,[::1]:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "intake-redis")
    settings = load_settings()
    assert settings.sentinels == [("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380)]
    assert settings.redis_configured
    for hostile in ("sentinel-a", "host:0", "host:65536", "host:\uff12\uff16\uff13\uff17\uff19", ":26379", "a:1,,b:2", "ho st:1",
                    "x\x01y:1", "user@host:1", "h:1," * 2000):
        monkeypatch.setenv("REDIS_SENTINELS", hostile)
        with pytest.raises(SettingsError, match="REDIS_SENTINELS: "):
            load_settings()
    monkeypatch.setenv("REDIS_SENTINELS", "h:26379")
    for hostile in ("", "a b", "x" * 201, "naïve", "a\x01"):
        monkeypatch.setenv("REDIS_SENTINEL_MASTER", hostile)
        with pytest.raises(SettingsError, match="REDIS_SENTINEL_MASTER: "):
            load_settings()
