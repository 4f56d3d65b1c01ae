"""A lower CPU priority for work that can wait (the `ai` queue) on cores it shares with ingestion.

`nice` alone is not enough on Linux. With the kernel's autogroup scheduling (`kernel.sched_autogroup_enabled`,
on by default in most distributions), every session is a scheduling group of its own, and groups share the
CPU equally whatever their processes' nice values: a niced worker started in a session of its own (by a
process manager, a container runtime, `setsid`) takes as much CPU as the ingest worker beside it. And the
database work a job causes runs in a PostgreSQL backend, at the backend's priority, not the worker's.

So `lower(n)` gives the process (and all it forks) a session of its own, and sets the nice value of the
process and of that session's group; `renice_backend` gives a database session's backend the same nice
value when PostgreSQL runs on this machine (a Unix socket) and the backend is a process we may renice
(the embedded PostgreSQL; a server run by another user keeps its priority). A lower priority only ever
gives CPU away: nothing here can raise one.
"""

from __future__ import annotations

import contextlib
import os

import psutil
import structlog

log = structlog.get_logger("intake.priority")

AUTOGROUP = "/proc/self/autogroup"


def current() -> int:
    """This process's nice value."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def lower(nice: int) -> int:
    """Run this process, and what it starts, `nice` steps below normal priority; returns the nice value."""
    if nice <= current():
        return current()
    if os.getsid(0) != os.getpid():
        # Our own session, so that the autogroup's nice below is ours alone and not the shell's or the
        # supervisor's. A process group leader cannot start a session: it then keeps the one it has.
        with contextlib.suppress(OSError):
            os.setsid()
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    if os.getsid(0) == os.getpid() and os.path.exists(AUTOGROUP):
        try:
            with open(AUTOGROUP, "w") as group:
                group.write(str(nice))
        except OSError as exc:
            log.warning("priority.autogroup.refused", error=str(exc))
    return current()


def renice_backend(pid: int, host: str | None) -> bool:
    """Give the PostgreSQL backend `pid` this process's nice value, if it is on this machine and ours to
    renice; False (and nothing changed) otherwise."""
    nice = current()
    if nice <= 0 or not host or not host.startswith("/"):
        return False  # a TCP connection: the backend may be on another machine, and its pid means nothing here
    try:
        backend = psutil.Process(pid)
        if not backend.name().startswith("postgres") or backend.nice() >= nice:
            return False
        backend.nice(nice)
        return True
    except (psutil.Error, OSError):
        return False
