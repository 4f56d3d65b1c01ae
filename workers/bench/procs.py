"""The processes a benchmark runs and watches: start and stop them, wait for them, account for their CPU.

CPU time comes from the kernel's own accounting (psutil), summed over each process tree: a tree's time is
every live member's user and system time plus the time of the children it has reaped, so a PostgreSQL
backend that exits between two readings still counts (in its postmaster's `children_*`). A phase's cost is
the difference of two readings, divided by the work the phase did.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import psycopg
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark waited too long for the fleet")
        time.sleep(interval)


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User and system CPU of `root` and its descendants, reaped ones included."""
    total = 0.0
    for proc in [root, *_children(root)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _own_cpu(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def _children(root: psutil.Process) -> list[psutil.Process]:
    try:
        return list(root.children(recursive=True))
    except psutil.Error:
        return []


class CpuMeter:
    """Named process trees whose CPU time a phase reads before and after."""

    def __init__(self) -> None:
        self._roots: dict[str, list[psutil.Process]] = {}
        self._excluded: dict[str, dict[int, tuple[psutil.Process, float]]] = {}

    def watch(self, name: str, pid: int) -> None:
        """Add the tree of `pid` to `name` (several web processes share one name)."""
        self._roots.setdefault(name, []).append(psutil.Process(pid))

    def forget(self, name: str) -> None:
        self._roots.pop(name, None)

    @property
    def names(self) -> set[str]:
        return set(self._roots)

    def exclude(self, name: str, pid: int) -> None:
        """Leave the process `pid` of `name`'s tree out of its time: the benchmark's own database session,
        whose polling is not the fleet's cost."""
        proc = psutil.Process(pid)
        self._excluded.setdefault(name, {})[pid] = (proc, _own_cpu(proc) or 0.0)

    def read(self) -> dict[str, float]:
        return {name: sum(tree_cpu_seconds(root) for root in roots) - self._excluded_seconds(name)
                for name, roots in self._roots.items()}

    def _excluded_seconds(self, name: str) -> float:
        """The excluded processes' time, the last reading kept once one has exited (its time then sits in
        its parent's reaped children's, still inside the tree)."""
        total = 0.0
        for pid, (proc, last) in list(self._excluded.get(name, {}).items()):
            now = _own_cpu(proc)
            if now is not None:
                self._excluded[name][pid] = (proc, now)
            total += last if now is None else now
        return total

    @contextmanager
    def phase(self) -> Iterator[dict[str, float]]:
        """Yields a dict filled, on exit, with each tree's CPU seconds spent inside the block (trees watched
        before it began), and `wall` for the block's length."""
        spent: dict[str, float] = {}
        before, started = self.read(), time.perf_counter()
        yield spent
        after = self.read()
        spent.update({name: max(0.0, after[name] - before[name]) for name in before if name in after})
        spent["wall"] = time.perf_counter() - started


def service_pids(admin_url: str, redis_url: str) -> dict[str, int]:
    """The PostgreSQL postmaster and the Redis server, when they run on this machine (else left out)."""
    pids: dict[str, int] = {}
    try:
        with psycopg.connect(admin_url) as conn:  # its backend's parent, asked while the backend lives
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            parent = psutil.Process(int(row[0])).parent() if row else None
        if parent is not None:
            pids["postgres"] = parent.pid
    except (psycopg.Error, psutil.Error):
        pass
    try:
        pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
        psutil.Process(pid)
        pids["redis"] = pid
    except (redis.RedisError, psutil.Error, KeyError):
        pass
    return pids


class RssSampler:
    """Peak resident memory of process trees, sampled in the background."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._watched: dict[str, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self._watched[name] = psutil.Process(pid)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for name, proc in list(self._watched.items()):
                try:
                    # dramatiq's parent only supervises: the largest process in the tree is what a worker costs.
                    sizes = [p.memory_info().rss for p in [proc, *proc.children(recursive=True)]]
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0.0), max(sizes) / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Watchers:
    """Where a started process is registered: memory peaks and CPU accounting, under one name."""

    def __init__(self) -> None:
        self.rss = RssSampler()
        self.cpu = CpuMeter()

    def watch(self, name: str, pid: int) -> None:
        self.rss.watch(name, pid)
        self.cpu.watch(name, pid)


@contextmanager
def process(args: list[str], env: dict[str, str], watchers: Watchers | None = None,
            name: str = "") -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the block's duration, in a session of its own."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if watchers is not None:
        watchers.watch(name, proc.pid)
    try:
        yield proc
    finally:
        if watchers is not None:
            watchers.cpu.forget(name)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def heartbeats(client: redis.Redis, namespace: str = "dramatiq") -> set[bytes]:
    """dramatiq's live broker ids: each worker process adds its own when its consumers first fetch."""
    members = client.zrange(f"{namespace}:__heartbeats__", 0, -1)
    return {member for member in members if isinstance(member, bytes)}


def wait_booted(client: redis.Redis, before: set[bytes], processes: int, timeout: float = 60) -> None:
    """Until `processes` new worker processes have fetched from Redis: their imports are behind them."""
    wait(lambda: len(heartbeats(client) - before) >= processes, timeout, interval=0.05)


# The held ids go back in front of any that arrived meanwhile: the oldest jobs stay first.
RELEASE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #items, 1, -1 do redis.call('LPUSH', KEYS[2], items[i]) end
redis.call('DEL', KEYS[1])
return #items
"""


@contextmanager
def held(client: redis.Redis, queue: str, namespace: str = "dramatiq") -> Iterator[Callable[[], None]]:
    """The queue's backlog out of the consumers' reach until the block calls the function it is given (or
    ends): workers that boot meanwhile start on the whole backlog together, so the first process up does not
    drain it while the others import, and a measurement can start before the first job is taken."""
    key, aside = f"{namespace}:{queue}", f"{namespace}:{queue}.bench-held"
    if client.exists(key):
        client.rename(key, aside)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            client.eval(RELEASE, 2, aside, key)

    try:
        yield release
    finally:
        release()
