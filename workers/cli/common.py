"""What every `intake` command shares: the two consoles, `--json` output, friendly errors, the runtime
(embedded or configured services) and engines on it."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine

from config import get_settings
from db.engine import make_engine
from pipelines.errors import Refusal, explained
from workers.embedded.runtime import Runtime, resolve
from workers.startup import check_database, check_maintenance

P = ParamSpec("P")
R = TypeVar("R")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class BadInput(Refusal):
    """A value given on the command line that the command cannot use; its message says what would do."""

    code = "bad_input"


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can fix into one line on stderr and exit status 1: those whose class says its
    message is for the user (`pipelines.errors.explained`: every refusal, the API's 403, 404, 409 and 422 among
    them, the services down, a setting or a tenant that does not work). Anything else is a bug: its traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not explained(exc):
                raise
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
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
    engine = make_engine(rt.database_url, prepared_statements=rt.settings.db_prepared_statements,
                         pool_size=1, application_name="intake-cli")
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class When(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """An ISO 8601 date or time, or an age such as 30m, 2h, 7d."""

    name = "when"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        match = _RELATIVE.match(str(value).strip())
        if match:
            try:
                return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
            except OverflowError:
                self.fail(f"{match[0][:40]!r} reaches back before the year 1", param, ctx)
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither an ISO date/time nor an age like 30m, 2h or 7d", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def admin_engine(rt: Runtime | None = None) -> Engine:
    """An engine on the maintenance connection; refused (one line, exit 1) without intake_maintenance
    rights, since under row-level security a cross-tenant command would see nothing and say so."""
    if rt is None:
        rt = maintenance_runtime(_command_name(click.get_current_context()))
    return make_engine(rt.admin_database_url, prepared_statements=rt.settings.db_prepared_statements,
                       pool_size=2, application_name="intake-ops")


def _command_name(ctx: click.Context) -> str:
    """`intake dlq list`, whatever name the program was started under."""
    names: list[str] = []
    while ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["intake", *names])


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


