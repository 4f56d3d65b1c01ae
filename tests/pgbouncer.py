"""Debian's PgBouncer in transaction mode in front of the embedded PostgreSQL, for tests.

The embedded server listens on a unix socket only, so PgBouncer reaches it with `host=<socket dir>`; the fleet
reaches PgBouncer over TCP on a free port, as it would a managed pooler. Two pooled databases point at the one
`intake` database: `intake` (a few server connections, for the fleet), `intake_one` (a single server
connection, so that every client of it shares one backend) and `intake_session` (session mode, for the
connections that LISTEN or hold a session lock: the webhook dispatcher's, as a deployment without a direct
route to PostgreSQL would give it). In session mode a server connection outlives its client: `DISCARD ALL`
(the reset query, which transaction mode never runs) drops the client's advisory locks and LISTENs with it,
or a dispatcher killed while it led would leave its lock to whichever client the pool hands that connection.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.processes import free_port, stop

# A client on a machine that died without a word (no FIN, no RST) is dropped after about 8 s, and with it the
# transaction it held open and that transaction's locks, or the server connection it held in session mode:
# TCP keepalives (idle seconds, seconds between probes, probes) find an idle one, and TCP_USER_TIMEOUT (ms)
# one that PgBouncer was sending to (results, notifications), which keepalives never probe. The OS defaults
# wait two hours and about fifteen minutes.
KEEPALIVE = (5, 1, 3)
USER_TIMEOUT_MS = 8000
# The one system user PgBouncer may drop to when started as root (it refuses to run as root): the embedded
# PostgreSQL's own, which owns the socket directory.
EMBEDDED_OS_USER = "pgserver"


def binary() -> str:
    """PgBouncer's path; skipped with the reason when it is missing (failed under CI=true)."""
    found = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)
    if found is None:
        reason = "pgbouncer is not installed (`make test` installs Debian's package when run as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class Bouncer:
    port: int
    log: Path

    def url(self, user: str, database: str = "intake") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


def _socket(database_url: str) -> tuple[str, int]:
    """The embedded server's socket directory and port, from its unix-socket URL."""
    directory = parse_qs(urlsplit(database_url).query)["host"][0]
    sockets = sorted(Path(directory).glob(".s.PGSQL.*"))
    sockets = [s for s in sockets if not s.name.endswith(".lock")]
    assert sockets, f"no PostgreSQL socket in {directory}"
    return directory, int(sockets[0].name.rsplit(".", 1)[1])


@contextmanager
def pgbouncer(database_url: str, workdir: Path, users: tuple[str, ...], *,
              listen: str = "127.0.0.1", pool_size: int = 4) -> Iterator[Bouncer]:
    """PgBouncer in transaction mode on a free TCP port of `listen`, in front of the server behind `database_url`."""
    command = binary()
    directory, pg_port = _socket(database_url)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    auth = workdir / "users.txt"
    auth.write_text("".join(f'"{user}" ""\n' for user in users))  # the embedded server trusts its socket
    config = workdir / "pgbouncer.ini"
    log = workdir / "pgbouncer.log"
    config.write_text(f"""[databases]
intake = host={directory} port={pg_port} dbname=intake pool_size={pool_size}
intake_one = host={directory} port={pg_port} dbname=intake pool_size=1
intake_session = host={directory} port={pg_port} dbname=intake pool_mode=session pool_size=8

[pgbouncer]
pool_mode = transaction
listen_addr = {listen}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth}
logfile = {log}
max_client_conn = 500
default_pool_size = 4
reserve_pool_size = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,options
tcp_keepalive = 1
tcp_keepidle = {KEEPALIVE[0]}
tcp_keepintvl = {KEEPALIVE[1]}
tcp_keepcnt = {KEEPALIVE[2]}
tcp_user_timeout = {USER_TIMEOUT_MS}
""")
    args = [command, str(config)]
    if os.geteuid() == 0:
        shutil.chown(workdir, EMBEDDED_OS_USER)
        for path in (auth, config):
            shutil.chown(path, EMBEDDED_OS_USER)
        args = [command, "-u", EMBEDDED_OS_USER, str(config)]
    errors = open(workdir / "stderr.log", "wb")  # kept open for the process's life, closed below
    proc = subprocess.Popen(args, stdout=errors, stderr=errors, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                tail = "".join(p.read_text(errors="replace")[-2000:] for p in (log, workdir / "stderr.log")
                               if p.exists())
                raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start listening") from None
                time.sleep(0.05)
        yield Bouncer(port, log)
    finally:
        stop(proc)
        errors.close()
