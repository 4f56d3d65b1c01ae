"""Running the fleet: the embedded services, migrations, and the processes of the Procfile (`serve`, `worker`
for ingest and ai, `clock`), or all of them at once with `intake run`."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import structlog
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from config import Settings, get_settings
from pipelines.ai import libraries
from pipelines.crypto import SecretBox
from pipelines.demo import write_private
from workers import redis_clients
from workers.cli.common import (
    admin_engine,
    admin_source,
    app_transaction,
    console,
    emit,
    friendly_errors,
    maintenance_runtime,
    out,
    runtime,
)
from workers.embedded.ports import Port, check_ports
from workers.embedded.runtime import Runtime, redacted, resolve
from workers.embedded.services import EmbeddedServices
from workers.priority import lower
from workers.queues import AI_QUEUE, QUEUES
from workers.startup import ServicesUnavailable, check_database, check_maintenance, check_unprivileged

log = structlog.get_logger("intake.cli")


# -- services -------------------------------------------------------------------------------------
@click.group()
def services() -> None:
    """The embedded PostgreSQL (+pgvector) and Redis under $INTAKE_HOME."""


def _print_status(data: dict[str, Any], as_json: bool) -> None:
    """One JSON object for scripts, URLs whole (the Redis one carries its password, as the fleet uses it);
    a table for people, with passwords masked."""
    if as_json:
        emit(data)
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        shown = redacted(value) if key.endswith("_url") and isinstance(value, str) else str(value)
        table.add_row(f"[bold]{key}[/]", shown)
    out.print(table)


@services.command("up")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def services_up(as_json: bool) -> None:
    """Start the embedded services (reusing running ones) and apply migrations."""
    from db import migrate

    home = EmbeddedServices(get_settings().home)
    status = home.up()
    assert status.admin_database_url is not None
    migrate.upgrade(status.admin_database_url, embedding_dim=get_settings().embedding_dim)
    home.write_state()
    _print_status(home.status().as_dict(), as_json)


@services.command("down")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def services_down(as_json: bool) -> None:
    """Stop the embedded services; their data stays in $INTAKE_HOME."""
    _print_status(EmbeddedServices(get_settings().home).down().as_dict(), as_json)


@services.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def services_status(as_json: bool) -> None:
    """Show whether the embedded services run and their URLs."""
    _print_status(EmbeddedServices(get_settings().home).status().as_dict(), as_json)


# -- schema ---------------------------------------------------------------------------------------
@click.command()
@friendly_errors
def migrate() -> None:
    """Apply the database migrations (as the schema owner, INTAKE_ADMIN_DATABASE_URL)."""
    from db import migrate as migrations

    rt = runtime()
    migrations.upgrade(rt.admin_database_url, embedding_dim=rt.settings.embedding_dim,
                       prepared_statements=rt.settings.db_prepared_statements)
    console.print("[green]database is up to date[/]")


# -- processes ------------------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@friendly_errors
def serve(host: str, port: int) -> None:
    """Run the web ingress (the Procfile's web process)."""
    import uvicorn

    from workers.web.app import create_app

    rt = runtime()
    check_unprivileged(rt.database_url)
    settings = rt.resolved(admin=False)
    app = create_app(settings, database_url=rt.database_url, redis_url=rt.redis_url,
                     secret_key=rt.require_secret_key())
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", access_log=False, log_config=None,
                lifespan="on", backlog=2048, timeout_graceful_shutdown=10, server_header=False,
                timeout_keep_alive=settings.keep_alive_seconds,
                # Forwarded headers are trusted only under INTAKE_TRUST_PROXY_HEADERS, by the ingress itself.
                proxy_headers=False)


@click.command()
@click.option("--processes", type=int, default=None, help="Worker processes [INTAKE_WORKER_PROCESSES, 2].")
@click.option("--threads", type=int, default=None, help="Threads per process [INTAKE_WORKER_THREADS, 8].")
@click.option("--queues", multiple=True, type=click.Choice(QUEUES),
              help="Queues to consume (repeatable; default: all).")
@click.option("--nice", type=click.IntRange(0, 19), default=None,
              help="Run below normal CPU priority, database sessions on this machine included [INTAKE_WORKER_NICE, 0].")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus port, 0 for none [INTAKE_WORKER_METRICS_PORT, 9191].")
@friendly_errors
def worker(processes: int | None, threads: int | None, queues: tuple[str, ...], nice: int | None,
           metrics_port: int | None) -> None:
    """Run dramatiq workers (the Procfile's worker and ai processes).

    This process becomes dramatiq's command line, with an environment made of the resolved runtime: each
    worker process builds its broker from it (`workers.broker:for_workers`) before it imports the actors.
    """
    rt = runtime()
    check_unprivileged(rt.database_url)
    settings = rt.settings
    if not queues or AI_QUEUE in queues:
        check_local_ai()
    env = rt.child_env(admin=False)
    # dramatiq's exposition server runs in a process forked from this one and reads these at import.
    env["dramatiq_prom_host"] = settings.metrics_host
    if metrics_port is not None:
        env["INTAKE_WORKER_METRICS_PORT"] = str(metrics_port)  # read by the broker in each worker process
    env["dramatiq_prom_port"] = str(settings.worker_metrics_port if metrics_port is None else metrics_port)
    if threads:
        env["INTAKE_WORKER_THREADS"] = str(threads)
    argv = [
        sys.executable, "-m", "dramatiq", "workers.broker:for_workers", "workers.actors",
        "--processes", str(processes or settings.worker_processes),
        "--threads", str(threads or settings.worker_threads),
        "--skip-logging",
        "--worker-shutdown-timeout", "30000",
    ]
    if queues:
        argv += ["--queues", *queues]
    nice = settings.worker_nice if nice is None else nice
    if nice:
        env["INTAKE_WORKER_NICE"] = str(lower(nice))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606  (our own interpreter, our own arguments)


def check_local_ai() -> None:
    """The start-up check of a worker that consumes `ai`: without the local provider's libraries (the `local-ai`
    extra) every job of a tenant on the local provider fails into the ledger, so it says so once, at start."""
    absent = libraries.missing()
    if absent:
        log.warning("worker.local_ai.missing", missing=absent, extra=libraries.EXTRA,
                    detail="jobs of tenants on the local AI provider will fail (local_ai_not_installed) until the "
                           "extra is installed and they are replayed; hosted providers are unaffected")


AI_NICE = 10  # `intake run`'s AI worker, as the Procfile's `ai` line


def worker_metrics_port(settings: Settings, offset: int) -> int:
    """The Prometheus port of one of `intake run`'s worker processes, which share a machine with the clock:
    INTAKE_WORKER_METRICS_PORT plus the worker's offset (the ingest worker 0, the clock's default port sits at
    1, the AI worker 2, a worker added later the next free one); none for any when that setting is 0."""
    return settings.worker_metrics_port + offset if settings.worker_metrics_port else 0


@dataclass(frozen=True)
class FleetProcess:
    """One process of `intake run`: its `intake` command, every port it listens on, and whether it is handed
    the maintenance connection (the admin process and the clock are; the web and the workers are not)."""

    name: str
    args: list[str]
    ports: tuple[Port, ...] = ()
    maintenance: bool = False


def metrics_host(settings: Settings, host: str) -> str:
    """Where `intake run`'s metrics listen: INTAKE_METRICS_HOST when set, else the fleet's own --host, so a
    fleet kept to this machine keeps its metrics there too."""
    return settings.metrics_host if "metrics_host" in settings.model_fields_set else host


def fleet(settings: Settings, *, host: str, port: int, admin_port: int, processes: int,
          threads: int) -> list[FleetProcess]:
    """The processes of `intake run`, as the Procfile's lines, with the ports each one listens on. The port
    check before start and the metrics host follow from this one list: a process added here has both."""
    on_metrics = metrics_host(settings, host)

    def metrics(number: int, what: str, change: str) -> tuple[Port, ...]:
        return (Port(number, on_metrics, what, change, "INTAKE_METRICS_HOST or --host"),) if number else ()

    def worker(name: str, queues: list[str], offset: int, *extra: str, processes: int = processes) -> FleetProcess:
        number = worker_metrics_port(settings, offset)
        args = ["worker", "--processes", str(processes), "--threads", str(threads), "--metrics-port", str(number),
                *extra]
        for queue in queues:
            args += ["--queues", queue]
        above = f"the {name} process's is {offset} above it; " if offset else ""
        return FleetProcess(name, args, metrics(number, f"the {name} process's metrics",
                                                f"INTAKE_WORKER_METRICS_PORT ({above}0 turns it off)"))

    return [
        FleetProcess("web", ["serve", "--host", host, "--port", str(port)],
                     (Port(port, host, "the web ingress", "--port"),)),
        FleetProcess("admin", ["admin", "--host", host, "--port", str(admin_port)],
                     (Port(admin_port, host, "the admin API and console", "--admin-port"),), maintenance=True),
        worker("worker", ["ingest"], 0),
        # The AI's own process, below normal priority: classification uses the cores ingestion leaves.
        worker("ai", ["ai"], 2, "--nice", str(AI_NICE)),
        # Webhook deliveries: a slow receiver holds only these threads (one process: its dispatcher leads alone).
        worker("deliver", ["deliver"], 3, processes=1),
        # Replies to the providers' send APIs: their own process, so a slow provider holds no ingest thread.
        worker("outbound", ["outbound"], 4),
        FleetProcess("clock", ["clock"], metrics(settings.clock_metrics_port, "the clock's metrics",
                                                 "INTAKE_CLOCK_METRICS_PORT (0 turns it off)"), maintenance=True),
    ]


PORT = click.IntRange(1, 65535)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where the web, admin and metrics listen (metrics: unless INTAKE_METRICS_HOST is set).")
@click.option("--port", default=8000, show_default=True, type=PORT)
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Threads per worker process.")
@click.option("--admin-port", default=8001, show_default=True, type=PORT, help="The admin API's port.")
@friendly_errors
def run(host: str, port: int, processes: int, threads: int, admin_port: int) -> None:
    """Everything in the foreground: services, migrations, web, workers and a demo tenant."""
    from db import migrate as migrations
    from pipelines.demo import ensure_demo
    from workers.embedded.supervisor import Child, supervise

    settings = get_settings()
    plan = fleet(settings, host=host, port=port, admin_port=admin_port, processes=processes, threads=threads)
    # Before anything starts: a child that cannot bind its port would be restarted forever, while the console
    # URL printed below led to whatever else answers there.
    check_ports(port for process in plan for port in process.ports)
    home = EmbeddedServices(settings.home)
    before = home.status()
    rt = resolve(settings, start=True)
    started = rt.embedded is not None and not (before.postgres_running and before.redis_running)
    key_file = Path(settings.home) / RUN_KEY_FILE
    key_id: uuid.UUID | None = None
    try:
        check_database(rt.admin_database_url, what=admin_source(rt))
        if rt.admin_database_url == rt.database_url:
            raise ServicesUnavailable("intake run migrates and runs the clock as the schema owner, and the web "
                                      "and workers as the fleet's role: set INTAKE_ADMIN_DATABASE_URL too")
        migrations.upgrade(rt.admin_database_url, embedding_dim=rt.settings.embedding_dim,
                       prepared_statements=rt.settings.db_prepared_statements)
        # Checked here, not in each child: a child refused at start would be restarted again and again.
        check_maintenance(rt.admin_database_url, command="intake run (its clock)", what=admin_source(rt))
        check_unprivileged(rt.database_url)
        with app_transaction(rt) as conn:
            demo = ensure_demo(conn, SecretBox(rt.require_secret_key()), Path(settings.home) / "demo.json")
        base = settings.public_base_url or f"http://{host}:{port}"
        _print_next_steps(base, demo, rt, Path(settings.home) / "demo.json")
        _revoke_last_run_key(rt, key_file)  # had the last run no chance to revoke it (killed, crashed)
        key_id = _print_admin(rt, host, admin_port, key_file)
        on_metrics = {"INTAKE_METRICS_HOST": metrics_host(settings, host)}
        supervise([Child(process.name, process.args, {**rt.child_env(admin=process.maintenance), **on_metrics})
                   for process in plan])
    finally:
        if key_id is not None and _revoke_key(rt, key_id) and _read_key_id(key_file) == key_id:
            key_file.unlink(missing_ok=True)
        if started:
            home.down()
            console.print("stopped the embedded services (their data stays in $INTAKE_HOME)")


RUN_KEY_FILE = "run_key"  # in $INTAKE_HOME: the id of the operator key the running (or last) `intake run` printed
RUN_ACTOR = "cli:intake run"


def _print_admin(rt: Runtime, host: str, admin_port: int, key_file: Path) -> uuid.UUID:
    """The admin API's URL and a fresh operator key (shown once), which lives as long as this run: its id is
    kept in `key_file` so that the run revokes it when it stops, or the next run does."""
    from pipelines import audit
    from pipelines.control import keys

    engine = admin_engine(rt)
    try:
        with engine.begin() as conn:
            view, secret = keys.create(conn, name="intake run", tenant_id=None, actor=audit.Actor(RUN_ACTOR))
    finally:
        engine.dispose()
    write_private(key_file, str(view.id).encode())
    out.print(f"[bold]Console[/] on http://{host}:{admin_port}/ : sign in with this operator key (shown once):")
    out.print(f"  {secret}", highlight=False)
    out.print(f"  (key id {view.id}; it works until this `intake run` stops)")
    out.print(f"Admin API on http://{host}:{admin_port}/v1/admin/ (document: /v1/admin/openapi.json), "
              "with the same key as `Authorization: Bearer`")
    return view.id


def _read_key_id(key_file: Path) -> uuid.UUID | None:
    try:
        return uuid.UUID(key_file.read_text().strip())
    except (FileNotFoundError, ValueError):  # none, or not an id this command wrote: nothing of ours to revoke
        return None


def _revoke_last_run_key(rt: Runtime, key_file: Path) -> None:
    key_id = _read_key_id(key_file)
    if key_id is None or _revoke_key(rt, key_id):
        key_file.unlink(missing_ok=True)


def _revoke_key(rt: Runtime, key_id: uuid.UUID) -> bool:
    """Revoke an operator key `intake run` printed, if it is still active. A run that cannot (its database
    gone) says which key to revoke by hand and keeps its id, so the next run tries again."""
    from pipelines import audit
    from pipelines.control import keys
    from pipelines.control.errors import NotFound

    engine = admin_engine(rt)
    try:
        with engine.begin() as conn:
            with contextlib.suppress(NotFound):  # a database made anew since: the key went with the old one
                if keys.get(conn, key_id).revoked_at is None:
                    keys.revoke(conn, key_id, audit.Actor(RUN_ACTOR))
    except SQLAlchemyError as exc:
        console.print(f"[yellow]warning:[/] could not revoke the operator key {key_id} ({type(exc).__name__}): "
                      f"run `intake key revoke {key_id}`")
        return False
    finally:
        engine.dispose()
    return True


def _print_next_steps(base: str, demo: dict[str, Any], rt: Runtime, path: Path) -> None:
    """What to try next. URLs are shown with their passwords masked, and only the fleet's: the admin
    connection is never printed."""
    telegram = demo["inboxes"]["telegram"]
    url = f"{base}/v1/webhooks/telegram/{telegram['id']}"
    body = ('{"update_id": 1, "message": {"message_id": 1, "date": 1700000000, "chat": {"id": 42, "type": '
            '"private"}, "from": {"id": 42, "first_name": "Ada"}, "text": "Hello, where is my order?"}}')
    database_url = redacted(rt.database_url)
    out.print(f"[bold green]Intake is running[/] on {base} with a demo tenant {demo['tenant_id']}")
    out.print(f"  inboxes and their secrets: {path}")
    redis_at = redacted(redis_clients.describe(rt.settings, rt.redis_url))
    out.print(f"  database: {database_url}\n  redis:    {redis_at}")
    out.print("Send a message as Telegram would:")
    out.print(f"  curl -s {url} -H 'content-type: application/json' \\\n"
              f"    -H 'X-Telegram-Bot-Api-Secret-Token: {telegram['secrets']['secret_token']}' \\\n"
              f"    -d '{body}'")
    out.print("Then look at it, as the fleet's role sees the demo tenant:")
    out.print(f"  PGOPTIONS='-c app.tenant_id={demo['tenant_id']}' psql '{database_url}' \\\n"
              "    -c 'SELECT content, sent_at FROM messages'", highlight=False)
    if database_url != rt.database_url:
        out.print("  (the password is the one in your DATABASE_URL)")
    out.print("Press Ctrl-C to stop.")


@click.command()
@click.option("--once", is_flag=True, help="Sweep once, print the result, and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print one JSON object.")
@friendly_errors
def clock(once: bool, as_json: bool) -> None:
    """Periodic upkeep (the Procfile's clock process): re-enqueue stored events that were never processed,
    and stored messages whose AI job was lost; forget webhook token claims past their window; mark SLA
    breaches and apply retention (`workers.clock` schedules and runs it)."""
    from workers import clock as process

    rt = maintenance_runtime("intake clock")
    settings = rt.resolved()
    engine = admin_engine(rt)
    try:
        if not once:
            process.run(settings, engine)
            return
        data = process.once(settings, engine)
    finally:
        engine.dispose()
    emit(data) if as_json else out.print(" ".join(f"{k}={v}" for k, v in data.items()))
