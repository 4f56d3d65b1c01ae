"""Start the fleet's real processes (`intake serve`, `intake worker`) for tests, and stop them."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog

INTAKE = str(Path(sys.executable).parent / "intake")


def run_intake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`intake ARGS` as a user runs it, in this run's environment (or `env`, then the whole environment): its exit
    status, stdout and stderr.

    The command runs in this process, through the same entry point (`workers.cli.main:main`) and with its settings
    read afresh from that environment. A new Python process would spend about two seconds of CPU importing the
    project before the command did anything, and the suite runs a few hundred commands: what these tests check is
    what a command does and prints, not how a process starts. A bug still shows as it would: an exception that
    escapes the command is exit status 1 with its traceback on stderr. Tests about a process itself (`serve`,
    `worker`, `run`, signals, start-up refusals) start `INTAKE` as a process."""
    from click.testing import CliRunner  # here, not at the top: the `offline` tests need not import the CLI

    from config import get_settings
    from workers.cli.main import main

    saved_env, handlers, level = dict(os.environ), logging.root.handlers[:], logging.root.level
    structlog_config = structlog.get_config()
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    get_settings.cache_clear()
    try:
        # A command may leave a connection for its process's exit to close (an engine not disposed on the way out of
        # a refusal); exiting closes it without a word, and so does this, once the command is done.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            result = CliRunner().invoke(main, list(args), prog_name="intake", catch_exceptions=True)
            gc.collect()
    finally:
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
        get_settings.cache_clear()
        # The command configured logging onto the stderr it was given, which is gone now: this process's own back.
        logging.root.handlers[:], logging.root.level = handlers, level
        structlog.configure(**structlog_config)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # as Python prints an uncaught one
    return subprocess.CompletedProcess([INTAKE, *args], result.exit_code, result.stdout, stderr)


def intake_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`intake ARGS` as a process of its own, for the commands whose behaviour spans processes: `services up` after
    another process's `services down` finds the servers by their files, not by what it remembers."""
    return subprocess.run([INTAKE, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ) if env is None else env)


def intake_ok(*args: str, env: dict[str, str] | None = None) -> Any:
    """`intake ARGS --json`, which must succeed: its one JSON object."""
    result = run_intake(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def intake_refused(*args: str, env: dict[str, str] | None = None) -> str:
    """`intake ARGS`, which must refuse with a clear message (exit 1, or 2 for a usage error), never a traceback."""
    result = run_intake(*args, env=env)
    assert result.returncode in (1, 2), result.stdout
    assert result.stderr.strip() and "Traceback" not in result.stderr
    return result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextmanager
def web_server(env: dict[str, str] | None = None, log_path: Path | None = None) -> Iterator[str]:
    port = free_port()
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([INTAKE, "serve", "--port", str(port)], env={**os.environ, **(env or {})},
                            stdout=out, stderr=out, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc)
        yield base
    finally:
        stop(proc)
        if log_path:
            out.close()  # type: ignore[union-attr]


@contextmanager
def worker(processes: int = 1, threads: int = 4, env: dict[str, str] | None = None,
           queues: tuple[str, ...] = (), log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`intake worker` as a process; its log lines go to `log` when given (to read when a test fails)."""
    args = [INTAKE, "worker", "--processes", str(processes), "--threads", str(threads)]
    for queue in queues:
        args += ["--queues", queue]
    with open(log if log is not None else os.devnull, "ab") as out:
        proc = subprocess.Popen(args, env={**os.environ, "INTAKE_WORKER_METRICS_PORT": "0", **(env or {})},
                                stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc, timeout=40)


def wait_until_serving(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until `base`/healthz answers 200; fails at once, with its exit status, if `proc` dies first."""

    def serving() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(serving, timeout=timeout, interval=0.1)


def wait_for(predicate, timeout: float = 60, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
