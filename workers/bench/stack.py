"""The services and processes a benchmark runs on: one PostgreSQL, one Redis, web and worker processes.

The services are embedded ones in a temporary home unless DATABASE_URL and REDIS_URL are given. Web
processes listen on ports of their own and the load generator spreads its connections over them, as a
load balancer would; worker commands are separate `intake worker` processes, as separate machines would run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import redis
from sqlalchemy.engine import make_url

from config import get_settings
from db import migrate
from db.engine import make_engine
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox, create_inbox, create_tenant
from workers.bench.procs import Watchers, free_port, heartbeats, held, process, service_pids, wait_booted, wait_http
from workers.bench.relay import Counts, Relay, Route, relay
from workers.bench.traffic import CHANNELS
from workers.broker import ensure
from workers.embedded.services import EmbeddedServices

# The bench's senders are never rate limited: the limits are not what is measured.
UNLIMITED = {"rate_limit_per_second": 1e9, "rate_limit_burst": 10**9}
# The fleet's process kinds that reach the services through a relay of their own, so that each kind's round
# trips are counted apart (an ingest job's are the `worker` routes' during the pipeline phase).
FLEET = ("web", "worker", "worker_ai", "deliver")


@dataclass
class Stack:
    app_url: str
    admin_url: str
    redis_url: str
    secret_key: str
    home: Path
    env: dict[str, str]
    watchers: Watchers = field(default_factory=Watchers)
    # With `--db-rtt-ms` / `--redis-rtt-ms`: the relay of each service ("db", "redis"), a route per fleet kind.
    relays: dict[str, Relay] = field(default_factory=dict)

    def env_for(self, kind: str) -> dict[str, str]:
        """The environment of a fleet process of `kind`: its services through the relays, where there are any."""
        env = dict(self.env)
        if kind not in FLEET:
            return env
        if "db" in self.relays:
            port = self.relays["db"].ports[kind]
            env["DATABASE_URL"] = relayed_database_url(env["DATABASE_URL"], port)
            env["INTAKE_ADMIN_DATABASE_URL"] = relayed_database_url(env["INTAKE_ADMIN_DATABASE_URL"], port)
        if "redis" in self.relays:
            env["REDIS_URL"] = relayed_redis_url(env["REDIS_URL"], self.relays["redis"].ports[kind])
        return env

    def network(self, kind: str) -> dict[str, Counts]:
        """What has crossed each relay for `kind` so far (nothing without relays)."""
        return {service: r.counts(kind) for service, r in self.relays.items()}

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def admin(self) -> psycopg.Connection[Any]:
        """The benchmark's own session, for setting up and watching: its CPU is not counted as the fleet's."""
        conn = psycopg.connect(self.admin_url, autocommit=True)
        if "postgres" in self.watchers.cpu.names:
            try:
                self.watchers.cpu.exclude("postgres", conn.info.backend_pid)
            except psutil.Error:  # a database on another machine: its time is not read at all
                pass
        return conn

    @contextmanager
    def webs(self, count: int) -> Iterator[list[int]]:
        """`count` web processes, each on a port of its own, all listening when the block starts."""
        ports = [free_port() for _ in range(count)]
        with ExitStack() as stack:
            for port in ports:
                stack.enter_context(process([sys.executable, "-m", "workers", "serve", "--port", str(port)],
                                            self.env_for("web"), self.watchers, "web"))
            for port in ports:
                wait_http(port)
            yield ports

    @contextmanager
    def workers(self, name: str, queue: str, *, commands: int, processes: int, threads: int, nice: int = 0,
                hold: bool = False) -> Iterator[Callable[[], None]]:
        """`commands` `intake worker` commands on `queue`, every worker process booted when the block starts.

        The queue's backlog waits until they all have booted; with `hold`, until the block calls the function
        it is given (so a measurement can start before the first job is taken)."""
        before = heartbeats(self.redis)
        args = [sys.executable, "-m", "workers", "worker", "--processes", str(processes), "--threads",
                str(threads), "--queues", queue, "--nice", str(nice)]
        with ExitStack() as stack:
            release = stack.enter_context(held(self.redis, queue))
            for _ in range(commands):
                stack.enter_context(process(args, self.env_for(name), self.watchers, name))
            wait_booted(self.redis, before, commands * processes)
            if not hold:
                release()
            yield release


def database_upstream(url: str) -> str:
    """Where a PostgreSQL URL's server is, for the relay: `host:port`, or `unix:` and its socket's path."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host") or "")
    port = parsed.port or 5432
    if not host or host.startswith("/"):
        return f"unix:{host or '/var/run/postgresql'}/.s.PGSQL.{port}"
    return f"{host}:{port}"


def relayed_database_url(url: str, port: int) -> str:
    """`url` with its server replaced by the relay's listener on 127.0.0.1:`port`."""
    parsed = make_url(url)
    query = {k: v for k, v in parsed.query.items() if k != "host"}
    return parsed.set(host="127.0.0.1", port=port, query=query).render_as_string(hide_password=False)


def redis_upstream(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError("--redis-rtt-ms relays a redis:// URL over TCP only")
    return f"{parsed.hostname}:{parsed.port or 6379}"


def relayed_redis_url(url: str, port: int) -> str:
    parsed = urlsplit(url)
    auth = parsed.netloc.rpartition("@")[0]
    return urlunsplit(parsed._replace(netloc=f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"))


@contextmanager
def open_stack(database_url: str | None, admin_database_url: str | None, redis_url: str | None, *,
               db_rtt_ms: float | None = None, redis_rtt_ms: float | None = None) -> Iterator[Stack]:
    """A migrated database and an empty Redis; embedded ones in a temporary home unless URLs are given.

    With `db_rtt_ms` or `redis_rtt_ms` (0 counts round trips without delaying them), the fleet's processes
    reach that service through a relay (`workers.bench.relay`); the bench's own sessions do not."""
    home = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    embedded = None
    stack: Stack | None = None
    relays = ExitStack()
    try:
        if database_url and redis_url:
            app_url, admin_url = database_url, admin_database_url or database_url
            secret_key = os.environ.get("INTAKE_SECRET_KEY") or "bench-secret-key-for-this-run-only"
        else:
            embedded = EmbeddedServices(home)
            status = embedded.up()
            assert status.database_url and status.admin_database_url and status.redis_url
            app_url, admin_url, redis_url = status.database_url, status.admin_database_url, status.redis_url
            secret_key = embedded.secret_key()
        migrate.upgrade(admin_url, embedding_dim=get_settings().embedding_dim)
        redis.Redis.from_url(redis_url).flushdb()
        env = {**os.environ, "DATABASE_URL": app_url, "INTAKE_ADMIN_DATABASE_URL": admin_url, "REDIS_URL": redis_url,
               "INTAKE_SECRET_KEY": secret_key, "INTAKE_HOME": str(home), "INTAKE_LOG_LEVEL": "warning",
               "INTAKE_LOG_FORMAT": "json", "INTAKE_WORKER_METRICS_PORT": "0"}
        # This process sends the no-op baseline's jobs: its broker is the fleet's, on this run's Redis.
        ensure(get_settings().model_copy(update={"redis_url": redis_url, "database_url": app_url,
                                                 "admin_database_url": admin_url}))
        stack = Stack(app_url, admin_url, redis_url, secret_key, home, env)
        if db_rtt_ms is not None:
            upstream = database_upstream(app_url)
            stack.relays["db"] = relays.enter_context(relay([Route(k, upstream, postgres=True) for k in FLEET],
                                                            db_rtt_ms))
        if redis_rtt_ms is not None:
            upstream = redis_upstream(redis_url)
            stack.relays["redis"] = relays.enter_context(relay([Route(k, upstream) for k in FLEET], redis_rtt_ms))
        for name, pid in service_pids(admin_url, redis_url).items():
            stack.watchers.cpu.watch(name, pid)
        yield stack
    finally:
        relays.close()
        if stack is not None:
            stack.watchers.rss.stop()
        if embedded is not None:
            embedded.down()
        shutil.rmtree(home, ignore_errors=True)


def create_tenants(stack: Stack, count: int, *, first: int = 0) -> list[dict[str, CreatedInbox]]:
    """`count` tenants with one inbox of each bench channel, known secrets for the channels that need them."""
    engine = make_engine(stack.app_url, prepared_statements=True, pool_size=1, application_name="intake-bench")
    box = SecretBox(stack.secret_key)
    issued = {"twilio": {"auth_token": "bench-twilio"}, "whatsapp": {"app_secret": "bench-meta"}}
    tenants = []
    try:
        for n in range(first, first + count):
            with engine.begin() as conn:
                tenant = create_tenant(conn, f"Bench tenant {n}")
                tenants.append({ch: create_inbox(conn, box, tenant, ch, given_secrets=issued.get(ch),
                                                 settings=UNLIMITED) for ch in CHANNELS})
    finally:
        engine.dispose()
    return tenants
