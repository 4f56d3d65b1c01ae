"""Where the fleet's services are: the URLs from the environment, or the embedded pair under $INTAKE_HOME.

Whether the database role behind a URL fits the process about to use it is the start-up's question
(`workers.startup`), asked of production and embedded services alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from config import Settings
from workers.embedded.services import EmbeddedServices
from workers.startup import ServicesUnavailable


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
