"""`intake run`: the web process and the workers in the foreground, restarted if they die.

In production a process manager (systemd, Kubernetes, Heroku's dyno manager, honcho) runs the Procfile's
`web` and `worker` lines and restarts them; this is the development equivalent.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("intake.run")


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "workers", *self.args], env=self.env)
        self.started_at = time.monotonic()


def supervise(children: list[Child], *, stop_after: float | None = None) -> int:
    """Run until SIGINT/SIGTERM; restart any child that exits, with a growing pause for crash loops."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    for child in children:
        child.start()
    deadline = None if stop_after is None else time.monotonic() + stop_after
    try:
        while not stopping and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.25)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or stopping:
                    continue
                quick = time.monotonic() - child.started_at < 10
                child.restarts = child.restarts + 1 if quick else 1
                pause = min(30.0, 0.5 * 2 ** (child.restarts - 1))
                log.warning("run.child.exited", child=child.name, code=code, restart_in_s=pause)
                time.sleep(pause)
                child.start()
    finally:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            if child.process is not None:
                try:
                    child.process.wait(30)
                except subprocess.TimeoutExpired:
                    child.process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
