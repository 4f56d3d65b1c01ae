"""What a process checks before it starts: the database answers, and the role behind its URL fits it.

The web and worker processes run under row-level security as a plain role; the clock, the admin process and
the operators' cross-tenant commands need `intake_maintenance`. A wrong role is refused at start, in one line,
rather than discovered later as a clock that sees nothing or a fleet that sees everything. The facts come
from `db.roles`; the embedded services' runtime (`workers.embedded.runtime`) only says where the services are.
"""

from __future__ import annotations

import psycopg

from db.roles import RoleFacts, role_facts
from pipelines.errors import RetryableError


class ServicesUnavailable(RetryableError):
    """The fleet cannot find or reach the services it needs (or they are not set up yet)."""

    explained = True


def check_database(url: str, *, what: str = "DATABASE_URL") -> None:
    """Fail with a readable message when the database cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServicesUnavailable(f"cannot connect to PostgreSQL at {what}: {reason}") from None


def role_of(url: str) -> RoleFacts:
    role = role_facts(url)
    if role is None:  # current_user always has a pg_roles row; a pooler that hides it gets no benefit of doubt
        raise ServicesUnavailable("cannot read the connected role from pg_roles")
    return role


def check_unprivileged(url: str, *, what: str = "DATABASE_URL") -> None:
    """The fleet runs under row-level security as a plain role: refuse a role that bypasses it (superuser,
    BYPASSRLS), reads across tenants (a member of intake_maintenance), or owns the tables."""
    role = role_of(url)
    if role.superuser or role.bypass_rls:
        reason = "bypasses row-level security (superuser or BYPASSRLS)"
    elif role.maintenance_member:
        reason = "is a member of intake_maintenance, which reads every tenant"
    elif role.owns_tables:
        reason = "owns the tables (it could turn row-level security off)"
    else:
        return
    raise ServicesUnavailable(
        f"{what} connects as {role.name!r}, which {reason}; connect the web and worker processes as a plain "
        "role such as intake_app (see the README)"
    )


def check_maintenance(url: str, *, command: str, what: str) -> None:
    """Cross-tenant commands need intake_maintenance: under the fleet's role, row-level security would show
    them nothing, and they would report an empty ledger or no stuck events instead of failing."""
    role = role_of(url)
    if role.superuser or role.maintenance_usage:
        return
    raise ServicesUnavailable(
        f"{command} reads across tenants and needs intake_maintenance rights, but {what} connects as "
        f"{role.name!r}, which has none: set INTAKE_ADMIN_DATABASE_URL to the schema owner or a member of "
        "intake_maintenance (see the README)"
    )
