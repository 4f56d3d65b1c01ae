"""Data lifecycle at the command line: `contact erase`, `tenant export|delete|stats`, and the `sla` group.

Tenant data is read and changed as the fleet's role bound to the tenant (row-level security holds, as for
the fleet); what spans tenants (the list of tenants for `tenant stats`, the audit row of a deletion, which
belongs to no tenant) uses the admin connection. Every input is checked before anything is touched: a bad id,
identity, duration or calendar is one line on stderr and exit status 1.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import redis
from sqlalchemy import Connection, Engine

from db.engine import make_engine
from db.tenancy import TenantId, resolve_tenant
from pipelines import audit
from pipelines.lifecycle import deletion, erasure, jobs, sla, stats
from pipelines.lifecycle.business_hours import DAYS
from pipelines.lifecycle.export import count_rows, export_tenant
from pipelines.lifecycle.retention import RetentionPolicy
from workers import redis_clients
from workers.cli.common import BadInput, admin_engine, emit, friendly_errors, out, progress, runtime
from workers.cli.control import actor
from workers.embedded.runtime import Runtime
from workers.ops import erasure as erasing
from workers.queues import NAMESPACE

P = ParamSpec("P")
R = TypeVar("R")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
MAX_ARGUMENT = 1024


def uuid_argument(value: str, what: str) -> uuid.UUID:
    plain = _plain(value, what, 64)
    try:
        return uuid.UUID(plain)
    except ValueError:
        raise BadInput(f"{what} must be a UUID such as 0b9c4e0e-3f1a-4d57-9d3e-6c1c2f9c8a10") from None


def _plain(value: str, what: str, limit: int = MAX_ARGUMENT) -> str:
    if len(value) > limit or any(ch in value for ch in "\x00\r\n"):
        raise BadInput(f"{what} must be at most {limit} characters on one line, without NUL")
    return value.strip()


@contextmanager
def tenant_transaction(rt: Runtime, tenant_id: uuid.UUID, *, repeatable: bool = False) -> Iterator[Connection]:
    """A transaction as the fleet's role, bound to the tenant (refused when there is no such tenant)."""
    engine = make_engine(rt.database_url, prepared_statements=rt.settings.db_prepared_statements,
                         pool_size=1, application_name="intake-cli")
    try:
        options = {"isolation_level": "REPEATABLE READ"} if repeatable else {}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            resolve_tenant(conn, tenant_id)
            yield conn
    finally:
        engine.dispose()


def redis_client(rt: Runtime) -> redis.Redis:
    return redis_clients.client(rt.settings, rt.redis_url, socket_connect_timeout=5)


# -- contact erase --------------------------------------------------------------------------------
@click.group()
def contact() -> None:
    """Contacts: the people who write to a tenant."""


@contact.command("erase")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--contact", "contact_id", default=None, help="The contact's id.")
@click.option("--identity", default=None, metavar="KIND:VALUE", help="phone:+358..., email:..., telegram:..., "
                                                                      "external:...")
@JSON
@friendly_errors
def contact_erase(tenant_id: str, contact_id: str | None, identity: str | None, as_json: bool) -> None:
    """Erase one person from a tenant: identities, message texts, raw events, AI output, waiting jobs."""
    tenant_uuid = uuid_argument(tenant_id, "--tenant")
    if (contact_id is None) == (identity is None):
        raise BadInput("name the person with exactly one of --contact ID or --identity KIND:VALUE")
    person = uuid_argument(contact_id, "--contact") if contact_id is not None else None
    named = erasure.parse_identity(_plain(identity, "--identity")) if identity is not None else None
    rt = runtime()
    tenant = TenantId(tenant_uuid)
    with tenant_transaction(rt, tenant_uuid) as conn:
        found = erasure.find_contact(conn, tenant, contact_id=person, identity=named)
        result = erasing.erase(conn, tenant, found, actor=actor(), settings=rt.resolved(admin=False), identity=named)
    jobs_changed = erasing.finish(redis_client(rt), tenant, result, rt.settings)
    data = {**result.as_dict(), "jobs": jobs_changed}
    if as_json:
        emit(data)
    elif result.contact_id is None and result.already_erased:
        out.print("no contact has this identity (erased already, or never seen), and nothing mentions it")
    elif result.contact_id is None:
        changed = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v)
        out.print(f"no contact has this identity; mentions of it redacted: {changed}")
    elif result.already_erased:
        out.print(f"contact {result.contact_id} was erased already: nothing changed")
    else:
        changed = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v)
        out.print(f"erased contact {result.contact_id}: {changed}; {jobs_changed} waiting jobs rewritten")


# -- tenant export, delete, stats -----------------------------------------------------------------
@click.command("export")
@click.argument("tenant_id")
@click.option("--out", "out_path", required=True, help="The archive to write (a new .zip file).")
@JSON
@friendly_errors
def tenant_export(tenant_id: str, out_path: str, as_json: bool) -> None:
    """Write every row of a tenant to a ZIP of JSON Lines with a manifest (counts, checksums)."""
    tenant_uuid = uuid_argument(tenant_id, "TENANT_ID")
    path = Path(_plain(out_path, "--out", 4096)).expanduser()
    rt = runtime()
    with tenant_transaction(rt, tenant_uuid, repeatable=True) as conn:
        total = sum(count_rows(conn, TenantId(tenant_uuid)).values())
        with progress() as bar:
            task = bar.add_task("exporting", total=total)
            manifest = export_tenant(conn, TenantId(tenant_uuid), path, on_rows=lambda n: bar.advance(task, n))
        # Every copy of a tenant's data that leaves is on record, as through the admin API.
        audit.record(conn, actor=actor(), action="tenant.export", tenant_id=tenant_uuid, subject_type="tenant",
                     subject_id=tenant_uuid, after={"path": str(path), "checksum": manifest.checksum})
    data = {"path": str(path), **manifest.as_dict()}
    if as_json:
        emit(data)
    else:
        rows = sum(t["rows"] for t in manifest.tables.values())
        out.print(f"exported {rows} rows of tenant {tenant_uuid} to {path} (checksum {manifest.checksum})",
                  markup=False)


@click.command("delete")
@click.argument("tenant_id")
@click.option("--confirm", required=True, help="The tenant's id again.")
@JSON
@friendly_errors
def tenant_delete(tenant_id: str, confirm: str, as_json: bool) -> None:
    """Delete a tenant and everything it holds (in batches), its Redis jobs and keys; audited."""
    tenant_uuid = uuid_argument(tenant_id, "TENANT_ID")
    if uuid_argument(confirm, "--confirm") != tenant_uuid:
        raise BadInput("--confirm must repeat the tenant's id")
    rt = runtime()
    with tenant_transaction(rt, tenant_uuid):
        pass  # refused here when there is no such tenant
    tenant = TenantId(tenant_uuid)
    engine = make_engine(rt.database_url, prepared_statements=rt.settings.db_prepared_statements,
                         pool_size=1, application_name="intake-cli")
    client = redis_client(rt)
    try:
        deletion.disable(engine, tenant)
        jobs.forget_jobs(client, NAMESPACE, str(tenant))
        with engine.begin() as conn:
            resolve_tenant(conn, tenant)
            total = sum(count_rows(conn, tenant).values())
        with progress() as bar:
            task = bar.add_task("deleting", total=total)
            deleted = deletion.delete_rows(engine, tenant, on_rows=lambda n: bar.advance(task, n))
    finally:
        engine.dispose()
    # Jobs sent while the rows went, and keys that name the tenant.
    jobs_removed = jobs.forget_jobs(client, NAMESPACE, str(tenant))
    keys_removed = jobs.forget_tenant_keys(client, str(tenant))
    audit_engine = admin_engine(rt)
    try:
        deletion.record_deletion(audit_engine, tenant, deleted, actor=actor())
    finally:
        audit_engine.dispose()
    data = {"tenant_id": str(tenant), "deleted": deleted, "rows": sum(deleted.values()),
            "redis_jobs": jobs_removed, "redis_keys": keys_removed}
    if as_json:
        emit(data)
    else:
        out.print(f"deleted tenant {tenant}: {data['rows']} rows")


@click.command("stats")
@click.argument("tenant_id", required=False)
@JSON
@friendly_errors
def tenant_stats(tenant_id: str | None, as_json: bool) -> None:
    """Rows and bytes per table, oldest and newest data, and what retention removes next (all tenants
    without an id)."""
    rt = runtime()
    defaults = RetentionPolicy.defaults(rt.settings)
    now = datetime.now(UTC)
    if tenant_id is not None:
        ids = [uuid_argument(tenant_id, "TENANT_ID")]
    else:
        engine: Engine = admin_engine(rt)
        try:
            with engine.begin() as conn:
                ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM tenants ORDER BY created_at")]
        finally:
            engine.dispose()
    results = []
    for each in ids:
        with tenant_transaction(rt, each) as conn:
            settings = conn.exec_driver_sql("SELECT settings FROM tenants").scalar()
            results.append(stats.tenant_stats(conn, TenantId(each), defaults.for_tenant(settings), now))
    if as_json:
        emit(results[0] if tenant_id is not None else {"tenants": results})
        return
    for result in results:
        _print_stats(result)


def _print_stats(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"tenant {result['tenant_id']}: {result['rows']} rows, {result['bytes']} bytes")
    for column in ("table", "rows", "bytes", "oldest", "newest"):
        table.add_column(column)
    for name, t in result["tables"].items():
        if t["rows"]:
            table.add_row(name, str(t["rows"]), str(t["bytes"]), str(t["oldest"] or "-")[:19],
                          str(t["newest"] or "-")[:19])
    out.print(table)
    for kind, due in result["retention"].items():
        out.print(f"  retention {kind}: kept {due['days']} days, {due['due_now']} due now, "
                  f"next due {str(due['next_due_at'] or '-')[:19]}")


TENANT_COMMANDS = (tenant_export, tenant_delete, tenant_stats)


# -- sla ------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^(\d{1,6})\s*([mhd]?)$")
_RANGE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?$")


def minutes(value: str | None, what: str) -> int | None:
    """90, 90m, 4h or 2d as minutes."""
    if value is None:
        return None
    match = _DURATION.match(_plain(value, what, 32))
    if match is None:
        raise BadInput(f"{what} is a duration such as 90m, 4h or 2d")
    return int(match[1]) * {"": 1, "m": 1, "h": 60, "d": 1440}[match[2]]


def business_hours(spec: str | None) -> dict[str, list[list[str]]] | None:
    """"mon-fri 09:00-17:00; sat 10:00-14:00" as a calendar's hours; none or "24/7": around the clock."""
    if spec is None or spec.strip() == "24/7":
        return None
    hours: dict[str, list[list[str]]] = {}
    for part in _plain(spec, "--hours").split(";"):
        days, _, times = part.strip().partition(" ")
        match = _RANGE.match(days.strip().lower())
        opens, dash, closes = times.strip().partition("-")
        if match is None or not dash:
            raise BadInput('--hours looks like "mon-fri 09:00-17:00; sat 10:00-14:00" (or "24/7")')
        first, last = DAYS.index(match[1]), DAYS.index(match[2] or match[1])
        for day in DAYS[first:last + 1] if first <= last else (*DAYS[first:], *DAYS[:last + 1]):
            hours.setdefault(day, []).append([opens.strip(), closes.strip()])
    return hours


@click.group("sla")
def sla_group() -> None:
    """SLA policies: first-response and resolution times per priority, in business hours."""


@sla_group.command("set")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--priority", required=True, help=f"One of: {', '.join(sla.PRIORITIES)}.")
@click.option("--first-response", default=None, help="Working time to a first response (90m, 4h, 2d).")
@click.option("--resolution", default=None, help="Working time to resolution (90m, 4h, 2d).")
@click.option("--time-zone", default="UTC", show_default=True, help="IANA time zone, e.g. Europe/Helsinki.")
@click.option("--hours", default=None, help='Business hours, e.g. "mon-fri 09:00-17:00" (default: 24/7).')
@click.option("--holiday", "holidays", multiple=True, metavar="YYYY-MM-DD", help="A closed day (repeatable).")
@JSON
@friendly_errors
def sla_set(tenant_id: str, priority: str, first_response: str | None, resolution: str | None, time_zone: str,
            hours: str | None, holidays: tuple[str, ...], as_json: bool) -> None:
    """Create or replace the tenant's policy for one priority."""
    tenant_uuid = uuid_argument(tenant_id, "--tenant")
    if len(holidays) > 1000:
        raise BadInput("at most 1000 holidays")
    first, resolve = minutes(first_response, "--first-response"), minutes(resolution, "--resolution")
    zone, opening = _plain(time_zone, "--time-zone", 64), business_hours(hours)
    closed = [_plain(h, "--holiday", 10) for h in holidays]
    with tenant_transaction(runtime(), tenant_uuid) as conn:
        before = {p["priority"]: p for p in sla.list_policies(conn, TenantId(tenant_uuid))}.get(priority)
        policy_id = sla.set_policy(conn, TenantId(tenant_uuid), _plain(priority, "--priority", 16),
                                   first_response_minutes=first, resolution_minutes=resolve, time_zone=zone,
                                   business_hours=opening, holidays=closed)
        policies = sla.list_policies(conn, TenantId(tenant_uuid))
        audit.record(conn, actor=actor(), action="sla.set", tenant_id=tenant_uuid, subject_type="sla_policy",
                     subject_id=policy_id, before=before,
                     after=next(p for p in policies if p["priority"] == priority))
    emit({"policies": policies}) if as_json else out.print(f"SLA policy for {priority} saved")


@sla_group.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@JSON
@friendly_errors
def sla_list(tenant_id: str, as_json: bool) -> None:
    """The tenant's SLA policies."""
    tenant_uuid = uuid_argument(tenant_id, "--tenant")
    with tenant_transaction(runtime(), tenant_uuid) as conn:
        policies = sla.list_policies(conn, TenantId(tenant_uuid))
    if as_json:
        emit({"policies": policies})
        return
    for p in policies:
        out.print(f"{p['priority']}: first response {p['first_response_minutes']} min, resolution "
                  f"{p['resolution_minutes']} min, {p['time_zone']}, hours {p['business_hours'] or '24/7'}, "
                  f"{len(p['holidays'])} holidays")


COMMANDS = (contact, sla_group)
