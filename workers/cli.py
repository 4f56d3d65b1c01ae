"""The `intake` command line: one entry point for operators, Procfile lines and scripts.

Every command that prints a result takes `--json` and then prints exactly one JSON object on stdout.
Errors go to stderr as one readable line and exit with status 1 (2 for wrong usage).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from config import SettingsError, configure_logging, get_settings
from db.engine import make_engine
from db.tenancy import UnknownTenant, resolve_tenant
from pipelines.crypto import SecretBox, SecretKeyError
from pipelines.inboxes import CHANNELS, InboxConfigError, create_inbox, create_tenant, webhook_url
from workers.runtime import (
    Runtime,
    ServicesUnavailable,
    check_database,
    check_maintenance,
    check_unprivileged,
    redacted,
    resolve,
)
from workers.services import EmbeddedServices, ServiceError

P = ParamSpec("P")
R = TypeVar("R")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
KNOWN_ERRORS = (SettingsError, ServicesUnavailable, ServiceError, InboxConfigError, UnknownTenant, SecretKeyError)


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can fix into one line on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except KNOWN_ERRORS as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise SystemExit(1) from None

    return wrapper


def admin_source(rt: Runtime) -> str:
    """Where the admin connection's URL came from, for messages that must not print the URL itself."""
    if rt.embedded is not None and rt.settings.database_url is None:
        return "the embedded PostgreSQL"
    return "INTAKE_ADMIN_DATABASE_URL" if rt.settings.admin_database_url else "DATABASE_URL"


def runtime(*, start: bool = False) -> Runtime:
    rt = resolve(get_settings(), start=start)
    check_database(rt.admin_database_url, what=admin_source(rt))
    return rt


def maintenance_runtime(command: str) -> Runtime:
    """The runtime of a command that reads across tenants: refused unless its connection (the admin URL,
    else DATABASE_URL) has intake_maintenance rights."""
    rt = runtime()
    check_maintenance(rt.admin_database_url, command=command, what=admin_source(rt))
    return rt


@contextmanager
def app_transaction(rt: Runtime) -> Iterator[Any]:
    engine = make_engine(rt.database_url, pool_size=1, application_name="intake-cli")
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="intake")
def main() -> None:
    """Intake: a multi-tenant message-ingestion worker fleet."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(1) from None
    configure_logging(settings.log_format, settings.log_level)


# -- services -------------------------------------------------------------------------------------
@main.group()
def services() -> None:
    """The embedded PostgreSQL (+pgvector) and Redis under $INTAKE_HOME."""


def _print_status(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(data)
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(f"[bold]{key}[/]", str(value))
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
    migrate.upgrade(status.admin_database_url)
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
@main.command()
@friendly_errors
def migrate() -> None:
    """Apply the database migrations (as the schema owner, INTAKE_ADMIN_DATABASE_URL)."""
    from db import migrate as migrations

    rt = runtime()
    migrations.upgrade(rt.admin_database_url)
    console.print("[green]database is up to date[/]")


# -- tenants and inboxes --------------------------------------------------------------------------
@main.group()
def tenant() -> None:
    """Tenants: the companies whose messages the fleet ingests."""


@tenant.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def tenant_create(name: str, as_json: bool) -> None:
    """Create a tenant and print its id."""
    rt = runtime()
    with app_transaction(rt) as conn:
        tenant_id = create_tenant(conn, name)
    if as_json:
        emit({"id": str(tenant_id), "name": name.strip()})
    else:
        out.print(f"created tenant [bold]{name.strip()}[/] with id [bold]{tenant_id}[/]")


def _parse_secrets(pairs: tuple[str, ...]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--secret")
        result[key.strip()] = value
    return result


@main.group()
def inbox() -> None:
    """Inboxes: one webhook endpoint of one channel for one tenant."""


@inbox.command("create")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--channel", required=True, help=f"One of: {', '.join(CHANNELS)}.")
@click.option("--name", default=None, help="A name for people.")
@click.option("--secret", "secrets_", multiple=True, metavar="KEY=VALUE", help="A channel secret (repeatable).")
@click.option("--region", default=None, help="Default region for national phone numbers (e.g. US, FI).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def inbox_create(
    tenant_id: str, channel: str, name: str | None, secrets_: tuple[str, ...], region: str | None, as_json: bool
) -> None:
    """Create an inbox; its secrets are printed once, then kept encrypted."""
    given = _parse_secrets(secrets_)
    rt = runtime()
    box = SecretBox(rt.require_secret_key())
    settings = {"default_region": region.upper()} if region else {}
    with app_transaction(rt) as conn:
        tenant = resolve_tenant(conn, tenant_id)
        created = create_inbox(conn, box, tenant, channel, name=name, given_secrets=given, settings=settings)
    base = rt.settings.public_base_url or "http://127.0.0.1:8000"
    data = {
        "id": str(created.id), "tenant_id": str(created.tenant_id), "channel": created.channel,
        "name": created.name, "webhook_url": webhook_url(base, channel, created.id, created.secrets),
        "secrets": created.secrets,
    }
    if as_json:
        emit(data)
        return
    out.print(f"created {channel} inbox [bold]{created.id}[/] for tenant {created.tenant_id}")
    out.print(f"webhook URL: {data['webhook_url']}")
    for key, value in created.secrets.items():
        out.print(f"  {key} = {value}")
    out.print("[yellow]the secrets are shown once; they are stored encrypted[/]")


# -- processes ------------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@friendly_errors
def serve(host: str, port: int) -> None:
    """Run the web ingress (the Procfile's web process)."""
    import uvicorn

    from workers.web.app import create_app

    rt = runtime()
    check_unprivileged(rt.database_url)
    os.environ.update(rt.child_env(admin=False))
    get_settings.cache_clear()
    app = create_app(get_settings(), database_url=rt.database_url, redis_url=rt.redis_url,
                     secret_key=rt.require_secret_key())
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", access_log=False, log_config=None,
                lifespan="on", backlog=2048, timeout_graceful_shutdown=10, server_header=False,
                timeout_keep_alive=get_settings().keep_alive_seconds,
                # Forwarded headers are trusted only under INTAKE_TRUST_PROXY_HEADERS, by the ingress itself.
                proxy_headers=False)


@main.command()
@click.option("--processes", type=int, default=None, help="Worker processes [INTAKE_WORKER_PROCESSES, 2].")
@click.option("--threads", type=int, default=None, help="Threads per process [INTAKE_WORKER_THREADS, 8].")
@click.option("--queues", multiple=True, type=click.Choice(["ingest", "ai", "maintenance"]),
              help="Queues to consume (repeatable; default: all).")
@friendly_errors
def worker(processes: int | None, threads: int | None, queues: tuple[str, ...]) -> None:
    """Run dramatiq workers (the Procfile's worker process)."""
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    rt = runtime()
    check_unprivileged(rt.database_url)
    settings = get_settings()
    os.environ.update(rt.child_env(admin=False))
    os.environ["INTAKE_PROCESS_ROLE"] = "worker"
    # dramatiq's exposition server runs in a process forked from this one and reads these at import.
    os.environ["dramatiq_prom_host"] = settings.worker_metrics_host
    os.environ["dramatiq_prom_port"] = str(settings.worker_metrics_port)
    if threads:
        os.environ["INTAKE_WORKER_THREADS"] = str(threads)
    get_settings.cache_clear()
    argv = [
        "workers.actors",
        "--processes", str(processes or settings.worker_processes),
        "--threads", str(threads or settings.worker_threads),
        "--skip-logging",
        "--worker-shutdown-timeout", "30000",
    ]
    if queues:
        argv += ["--queues", *queues]
    raise SystemExit(dramatiq_main(make_argument_parser().parse_args(argv)))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--processes", default=1, show_default=True, type=int, help="Worker processes.")
@click.option("--threads", default=8, show_default=True, type=int, help="Threads per worker process.")
@friendly_errors
def run(host: str, port: int, processes: int, threads: int) -> None:
    """Everything in the foreground: services, migrations, web, workers and a demo tenant."""
    from db import migrate as migrations
    from pipelines.demo import ensure_demo
    from workers.supervisor import Child, supervise

    settings = get_settings()
    home = EmbeddedServices(settings.home)
    before = home.status()
    rt = resolve(settings, start=True)
    started = rt.embedded is not None and not (before.postgres_running and before.redis_running)
    try:
        check_database(rt.admin_database_url, what=admin_source(rt))
        if rt.admin_database_url == rt.database_url:
            raise ServicesUnavailable("intake run migrates and runs the clock as the schema owner, and the web "
                                      "and workers as the fleet's role: set INTAKE_ADMIN_DATABASE_URL too")
        migrations.upgrade(rt.admin_database_url)
        # Checked here, not in each child: a child refused at start would be restarted again and again.
        check_maintenance(rt.admin_database_url, command="intake run (its clock)", what=admin_source(rt))
        check_unprivileged(rt.database_url)
        with app_transaction(rt) as conn:
            demo = ensure_demo(conn, SecretBox(rt.require_secret_key()), Path(settings.home) / "demo.json")
        fleet_env, clock_env = rt.child_env(admin=False), rt.child_env()
        base = settings.public_base_url or f"http://{host}:{port}"
        _print_next_steps(base, demo, rt, Path(settings.home) / "demo.json")
        supervise([
            Child("web", ["serve", "--host", host, "--port", str(port)], fleet_env),
            Child("worker", ["worker", "--processes", str(processes), "--threads", str(threads)], fleet_env),
            Child("clock", ["clock"], clock_env),
        ])
    finally:
        if started:
            home.down()
            console.print("stopped the embedded services (their data stays in $INTAKE_HOME)")


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
    out.print(f"  database: {database_url}\n  redis:    {redacted(rt.redis_url)}")
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


# The operators' commands register themselves on `main`.
from workers import cli_ai as _cli_ai  # noqa: E402, F401
from workers import cli_bench as _cli_bench  # noqa: E402, F401
from workers import cli_ops as _cli_ops  # noqa: E402, F401
