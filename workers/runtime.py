"""Where the fleet's services are: the URLs from the environment, or the embedded pair under $INTAKE_HOME."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

from config import Settings
from workers.services import EmbeddedServices


class ServicesUnavailable(Exception):
    """The fleet cannot find or reach the services it needs."""


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    database_url: str
    admin_database_url: str
    redis_url: str
    secret_key: str | None
    embedded: EmbeddedServices | None

    def child_env(self) -> dict[str, str]:
        """The environment for a web or worker process started from this one."""
        env = dict(os.environ)
        env["DATABASE_URL"] = self.database_url
        env["INTAKE_ADMIN_DATABASE_URL"] = self.admin_database_url
        env["REDIS_URL"] = self.redis_url
        env["INTAKE_HOME"] = str(self.settings.home)
        if self.secret_key:
            env["INTAKE_SECRET_KEY"] = self.secret_key
        return env

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
    if database_url is None or redis_url is None:
        embedded = EmbeddedServices(settings.home)
        status = embedded.up() if start else embedded.status()
        if database_url is None:
            if status.database_url is None or status.admin_database_url is None:
                raise ServicesUnavailable(
                    f"DATABASE_URL is unset and the embedded PostgreSQL in {status.home} is not running: "
                    "run `intake services up`, or set DATABASE_URL"
                )
            database_url, admin_url = status.database_url, admin_url or status.admin_database_url
        if redis_url is None:
            if status.redis_url is None:
                raise ServicesUnavailable(
                    f"REDIS_URL is unset and the embedded Redis in {status.home} is not running: "
                    "run `intake services up`, or set REDIS_URL"
                )
            redis_url = status.redis_url
        secret_key = secret_key or embedded.secret_key()
    return Runtime(settings, database_url, admin_url or database_url, redis_url, secret_key, embedded)


def check_database(url: str, *, what: str = "DATABASE_URL") -> None:
    """Fail with a readable message when the database cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServicesUnavailable(f"cannot connect to PostgreSQL at {what}: {reason}") from None


def check_unprivileged(url: str) -> None:
    """The fleet must run under row-level security: refuse superuser and BYPASSRLS roles."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if row and (row[1] or row[2]):
        raise ServicesUnavailable(
            f"DATABASE_URL connects as {row[0]!r}, which bypasses row-level security (superuser or "
            "BYPASSRLS); connect the fleet as a plain role such as intake_app (see the README)"
        )
