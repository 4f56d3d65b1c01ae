"""`intake worker --nice`: the AI's work yields the CPU to ingestion, its database sessions included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from workers.cli.main import main

ROOT = Path(__file__).resolve().parents[2]

# A worker process as `intake worker --nice 7` leaves it: lowered, then using the fleet's engine. It reports
# what the kernel says about it and its database backend, and holds the connection until stdin closes.
LOWERED = """
import json, os, subprocess, sys
from sqlalchemy import text
from workers import priority
from workers.resources import engine

bystander = subprocess.Popen(["sleep", "60"])  # started before: normal priority
nice = priority.lower(7)
with engine().connect() as conn:
    backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    group = open("/proc/self/autogroup").read() if os.path.exists("/proc/self/autogroup") else None
    print(json.dumps({"nice": nice, "own_session": os.getsid(0) == os.getpid(), "autogroup": group,
                      "backend": backend, "bystander": bystander.pid,
                      "bystander_reniced": priority.renice_backend(bystander.pid, "/tmp"),
                      "tcp_reniced": priority.renice_backend(backend, "127.0.0.1")}), flush=True)
    sys.stdin.read()
bystander.kill()
"""


def test_a_lowered_worker_runs_below_normal_priority_with_its_local_database_sessions(
        stack: dict[str, str], app_engine: Engine) -> None:
    with subprocess.Popen([sys.executable, "-c", LOWERED], cwd=ROOT, env=os.environ | stack,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        seen = json.loads(child.stdout.readline())
        assert seen["nice"] == 7
        # A session of its own, so that under autogroup scheduling the group's priority is its alone.
        assert seen["own_session"]
        if seen["autogroup"] is not None:
            assert seen["autogroup"].split()[-1] == "7", seen["autogroup"]
        assert psutil.Process(seen["backend"]).nice() == 7  # the queries it causes yield too
        # Only a PostgreSQL backend reached through a local socket is reniced: never another process,
        # never a pid named by a TCP connection (the server may be another machine).
        assert not seen["bystander_reniced"] and not seen["tcp_reniced"]
        assert psutil.Process(seen["bystander"]).nice() == 0
        # The fleet's other sessions (here the tests' own) keep normal priority.
        with app_engine.connect() as conn:
            ours = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert psutil.Process(ours).nice() == 0
        child.stdin.close()
        assert child.wait(30) == 0


@pytest.mark.parametrize("value", ["20", "-1", "abc", "1\x00", "9" * 400])
def test_worker_refuses_a_nice_value_outside_0_to_19(value: str) -> None:
    result = CliRunner().invoke(main, ["worker", "--nice", value])
    assert result.exit_code == 2
    assert "--nice" in result.output
