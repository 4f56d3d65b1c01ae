"""`intake changes list|tail`: the tenant's change feed at the command line, read as the admin API reads it.

Both read `change_events` as the fleet's role bound to the tenant, through `pipelines.changes.read` (the
poll API's function). `list` prints one page (`--json`: the API's `{"items", "next_after"}`); `tail` prints
every event after `--after` as one JSON line each and follows the feed, woken by LISTEN `intake_changes` (as
the admin process's streams are), until interrupted.
"""

from __future__ import annotations

import uuid

import click
import orjson
import psycopg
from sqlalchemy.engine import make_url

from db.tenancy import TenantId
from pipelines import changes
from workers.cli.common import BadInput, emit, friendly_errors, out, runtime
from workers.cli.lifecycle import JSON, tenant_transaction, uuid_argument

MAX_SEQ = 2**63 - 1
TENANT = click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
AFTER = click.option("--after", default=0, type=int, show_default=True, help="Events after this seq.")
TYPES = click.option("--types", default=None, metavar="TYPE,...", help="Only these event types.")
WAIT_SECONDS = 15.0


def _checked(after: int, types: str | None) -> list[str] | None:
    if not 0 <= after <= MAX_SEQ:
        raise BadInput(f"--after must be a seq from 0 to {MAX_SEQ}")
    if types is not None and len(types) > 1000:
        raise BadInput("--types must be at most 1000 characters")
    try:
        return changes.parse_types(types)
    except ValueError as exc:
        raise BadInput(f"--types: {exc}") from None


@click.group("changes")
def changes_group() -> None:
    """A tenant's change feed: every change the fleet made, numbered in commit order."""


@changes_group.command("list")
@TENANT
@AFTER
@click.option("--limit", default=100, type=int, show_default=True, help="At most this many events (1-1000).")
@TYPES
@JSON
@friendly_errors
def list_changes(tenant_id: str, after: int, limit: int, types: str | None, as_json: bool) -> None:
    """One page of the feed after --after, oldest first; ask again with --after NEXT_AFTER."""
    tenant = uuid_argument(tenant_id, "--tenant")
    wanted = _checked(after, types)
    if not 1 <= limit <= 1000:
        raise BadInput("--limit must be from 1 to 1000")
    with tenant_transaction(runtime(), tenant) as conn:
        items = changes.read(conn, TenantId(tenant), after=after, limit=limit, types=wanted)
    next_after = items[-1].seq if items else after
    if as_json:
        emit({"items": [i.as_dict() for i in items], "next_after": next_after})
        return
    for item in items:
        out.print(f"{item.seq:>8}  {item.created_at:%Y-%m-%d %H:%M:%S}  {item.type:<24} {item.id}", highlight=False)
    out.print(f"next: --after {next_after}" if items else "no events after this seq", highlight=False)


@changes_group.command("tail")
@TENANT
@AFTER
@TYPES
@friendly_errors
def tail_changes(tenant_id: str, after: int, types: str | None) -> None:
    """Print every event after --after as a JSON line, and follow the feed until interrupted."""
    tenant = uuid_argument(tenant_id, "--tenant")
    wanted = _checked(after, types)
    rt = runtime()
    dsn = make_url(rt.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(dsn, autocommit=True, application_name="intake-cli-tail") as listener:
            listener.execute("LISTEN intake_changes")  # before the first read: nothing committed later is missed
            while True:
                with tenant_transaction(rt, tenant) as conn:
                    items = changes.read(conn, TenantId(tenant), after=after, limit=100, types=wanted)
                for item in items:
                    click.echo(orjson.dumps(item.as_dict()).decode())
                    after = item.seq
                if len(items) < 100:
                    _wait(listener, tenant)
    except KeyboardInterrupt:
        return
    except psycopg.OperationalError as exc:
        raise BadInput(f"lost the database connection: {exc}") from None


def _wait(listener: psycopg.Connection[object], tenant: uuid.UUID) -> None:
    """Until a notification names this tenant, or WAIT_SECONDS pass (then the caller reads anyway)."""
    prefix = f"{tenant}:"
    for notice in listener.notifies(timeout=WAIT_SECONDS):
        if notice.payload.startswith(prefix):
            return


COMMANDS = (changes_group,)
