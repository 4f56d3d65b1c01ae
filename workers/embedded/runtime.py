"""Where the fleet's services are: the URLs from the environment, or the embedded pair under $INTAKE_HOME.

And whether the database role behind a URL fits the process about to use it: the web and worker processes
run under row-level security as a plain role, the clock and the operators' cross-tenant commands need
`intake_maintenance`. A wrong role is refused at start, in one line, rather than discovered later as a
clock that sees nothing or a fleet that sees everything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg

from config import Settings
from pipelines.errors import RetryableError
from workers.embedded.services import EmbeddedServices


class ServicesUnavailable(RetryableError):
    """The fleet cannot find or reach the services it needs (or they are not set up yet)."""

    explained = True


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    # URLs may carry passwords: kept out of repr(), so no log line or traceback shows them.
    database_url: str = field(repr=False)
    admin_database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    secret_key: str | None = field(repr=False)
    embedded: EmbeddedServices | None

    def child_env(self, *, admin: bool = True) -> dict[str, str]:
        """The environment for a process started from this one; without `admin`, for a web or worker
        process, which has no use for the maintenance connection and so is not handed it."""
        env = dict(os.environ)
        env["DATABASE_URL"] = self.database_url
        if admin:
            env["INTAKE_ADMIN_DATABASE_URL"] = self.admin_database_url
        else:
            env.pop("INTAKE_ADMIN_DATABASE_URL", None)
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env["INTAKE_HOME"] = str(self.settings.home)
        if self.secret_key:
            env["INTAKE_SECRET_KEY"] = self.secret_key
        return env

    def resolved(self, *, admin: bool = True) -> Settings:
        """The settings with this runtime's URLs and key filled in, to hand to the code this process runs;
        without `admin`, for the web and workers, which are not handed the maintenance connection."""
        return self.settings.model_copy(update={
            "database_url": self.database_url, "redis_url": self.redis_url or None, "secret_key": self.secret_key,
            "admin_database_url": self.admin_database_url if admin else None,
        })

    @property
    def listen_database_url(self) -> str:
        """A direct (session) connection for LISTEN: INTAKE_LISTEN_DATABASE_URL when DATABASE_URL goes through
        PgBouncer in transaction mode (where LISTEN cannot work), else DATABASE_URL."""
        return self.settings.listen_database_url or self.database_url

    def require_secret_key(self) -> str:
        if not self.secret_key:
            raise ServicesUnavailable("INTAKE_SECRET_KEY is not set: it encrypts inbox secrets at rest")
        return self.secret_key


def resolve(settings: Settings, *, start: bool = False) -> Runtime:
    """Use DATABASE_URL/REDIS_URL when set; otherwise the embedded services (started when `start`)."""
    embedded: EmbeddedServices | None = None
    database_url, redis_url = settings.database_url, settings.redis_url
    admin_url = settings.admin_database_url
    secret_key = settings.secret_key
    if database_url is None or not settings.redis_configured:
        embedded = EmbeddedServices(settings.home)
        status = embedded.up() if start else embedded.status()
        if database_url is None:
            if status.database_url is None or status.admin_database_url is None:
                raise ServicesUnavailable(
                    f"DATABASE_URL is unset and the embedded PostgreSQL in {status.home} is not running: "
                    "run `intake services up`, or set DATABASE_URL"
                )
            database_url, admin_url = status.database_url, admin_url or status.admin_database_url
        if not settings.redis_configured:
            if status.redis_url is None:
                raise ServicesUnavailable(
                    f"REDIS_URL is unset and the embedded Redis in {status.home} is not running: "
                    "run `intake services up`, or set REDIS_URL"
                )
            redis_url = status.redis_url
        secret_key = secret_key or embedded.secret_key()
    # With REDIS_SENTINELS and no REDIS_URL the URL is empty: every client asks the Sentinels (workers.redis_clients).
    return Runtime(settings, database_url, admin_url or database_url, redis_url or "", secret_key, embedded)


def check_database(url: str, *, what: str = "DATABASE_URL") -> None:
    """Fail with a readable message when the database cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServicesUnavailable(f"cannot connect to PostgreSQL at {what}: {reason}") from None


# What the connected role may do. pg_has_role() refuses a role name that does not exist, so the role is
# looked up by oid first: before `intake migrate` there is no intake_maintenance, and no rights in it.
ROLE_FACTS = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       coalesce((SELECT pg_has_role(current_user, m.oid, 'MEMBER') FROM pg_roles m
                 WHERE m.rolname = 'intake_maintenance'), false) AS maintenance_member,
       coalesce((SELECT pg_has_role(current_user, m.oid, 'USAGE') FROM pg_roles m
                 WHERE m.rolname = 'intake_maintenance'), false) AS maintenance_usage,
       coalesce((SELECT pg_has_role(current_user, c.relowner, 'MEMBER') FROM pg_class c
                 WHERE c.oid = to_regclass('inbound_events')), false) AS owns_tables
FROM pg_roles r WHERE r.rolname = current_user
"""


@dataclass(frozen=True)
class RoleFacts:
    """The connected role and the rights that decide which of the fleet's jobs it fits."""

    name: str
    superuser: bool
    bypass_rls: bool
    maintenance_member: bool
    maintenance_usage: bool
    owns_tables: bool


def role_facts(url: str) -> RoleFacts:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(ROLE_FACTS).fetchone()
    if row is None:  # current_user always has a pg_roles row; a pooler that hides it gets no benefit of doubt
        raise ServicesUnavailable("cannot read the connected role from pg_roles")
    return RoleFacts(*row)


def check_unprivileged(url: str, *, what: str = "DATABASE_URL") -> None:
    """The fleet runs under row-level security as a plain role: refuse a role that bypasses it (superuser,
    BYPASSRLS), reads across tenants (a member of intake_maintenance), or owns the tables."""
    role = role_facts(url)
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
    role = role_facts(url)
    if role.superuser or role.maintenance_usage:
        return
    raise ServicesUnavailable(
        f"{command} reads across tenants and needs intake_maintenance rights, but {what} connects as "
        f"{role.name!r}, which has none: set INTAKE_ADMIN_DATABASE_URL to the schema owner or a member of "
        "intake_maintenance (see the README)"
    )


def redacted(url: str) -> str:
    """`url` with its password (in the authority or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
    query = "&".join(
        f"{key}=***" if key.lower() in {"password", "sslpassword"} else f"{key}={value}" if sep else key
        for key, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
