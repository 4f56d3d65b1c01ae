"""The bench's options, its progress callback and the CPU arithmetic, apart from the run that uses them: the
phases (`baselines`, `feed`, `scale`) are typed against these, never against the module that runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Progress = Callable[[str, float | None], None]  # (phase description, fraction done or None)
Request = tuple[str, dict[str, str], bytes]


@dataclass(frozen=True)
class BenchOptions:
    events: int = 20_000
    tenants: int = 4
    processes: int = 2  # per worker command
    threads: int = 8
    concurrency: int = 64
    web_processes: int = 1
    worker_processes: int = 1  # separate `intake worker` commands, as separate machines would run
    ai_seconds: float = 30.0
    # The AI workers run as production should run them beside ingestion on shared cores: one process per
    # command, at a lower CPU priority, so a backlog of classification never delays a message's storage.
    ai_processes: int = 1
    ai_nice: int = 10
    lone_messages: int = 12
    quiet_seconds: float = 1.0
    feed_rate: float | None = None  # the feed's latency phase at this rate instead of half the lower peak
    db_rtt_ms: float | None = None  # the fleet reaches PostgreSQL through a relay with this round trip
    redis_rtt_ms: float | None = None  # and Redis (0: counted, not delayed)
    database_url: str | None = None
    admin_database_url: str | None = None
    redis_url: str | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self) | {"database_url": None, "admin_database_url": None, "redis_url": None}


def per_item(spent: dict[str, float], count: int) -> dict[str, float | None]:
    """CPU milliseconds per item for each process tree of a phase."""
    return {name: round(seconds * 1000 / count, 4) if count else None
            for name, seconds in spent.items() if name != "wall"}


def cores(spent: dict[str, float]) -> float:
    """The cores a phase kept busy, all watched processes together."""
    busy = sum(seconds for name, seconds in spent.items() if name != "wall")
    return round(busy / spent["wall"], 2) if spent.get("wall") else 0.0
