"""One error family: the fleet's exceptions share one root, and every failure is sorted in one place."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy.exc
from dramatiq.middleware.shutdown import Shutdown
from dramatiq.middleware.time_limit import TimeLimitExceeded

from db.tenancy import UnknownTenant
from pipelines import errors
from pipelines.errors import IntakeError, PermanentError, RetryableError, is_retryable

ROOT = Path(__file__).resolve().parents[2]
# The modules that define the fleet's exceptions; importing them registers every subclass of the root.
DEFINING = ("pipelines.ai.base", "pipelines.channels.base", "pipelines.contacts", "pipelines.crypto",
            "pipelines.inboxes", "pipelines.ingest", "pipelines.control.errors", "pipelines.lifecycle.business_hours",
            "pipelines.lifecycle.erasure", "pipelines.lifecycle.export", "pipelines.lifecycle.sla",
            "workers.embedded.runtime", "workers.embedded.services", "workers.web.app", "workers.web.writer",
            "workers.admin.http", "workers.admin.api", "workers.admin.console.web", "workers.cli.common", "workers.embedded.ports",
            "pipelines.outbound.base", "pipelines.outbound.send", "pipelines.webhooks.targets")
BUILTIN_ROOTS = {"Exception", "BaseException", "ValueError", "RuntimeError", "LookupError", "KeyError",
                 "TypeError", "OSError"}


def family() -> set[type[IntakeError]]:
    for name in DEFINING:
        importlib.import_module(name)
    found: set[type[IntakeError]] = set()
    todo: list[type[IntakeError]] = [IntakeError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_pipelines_and_workers_have_one_exception_root() -> None:
    roots = []
    for package in ("pipelines", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(
                        isinstance(base, ast.Name) and base.id in BUILTIN_ROOTS for base in node.bases):
                    roots.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert roots == ["pipelines/errors.py:IntakeError"]


def test_every_error_is_on_one_branch_and_drawn_in_the_tree() -> None:
    members = family()
    assert len(members) > 15
    for cls in members - {PermanentError, RetryableError}:
        assert issubclass(cls, PermanentError) != issubclass(cls, RetryableError) or cls.__name__ == "AIError", cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__module__}.{cls.__name__} is not in the tree"


def test_the_fleets_own_errors_say_what_they_are() -> None:
    from pipelines.ai.base import AIBadOutput, AIRefused, AIUnavailable
    from pipelines.channels import PayloadError, SignatureError

    assert [is_retryable(e("x")) for e in (AIUnavailable, AIRefused, AIBadOutput, PayloadError, SignatureError)] == [
        True, False, False, False, False]


def wrapped(orig: BaseException) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.DBAPIError("SELECT 1", {}, orig)


RETRYABLE = [
    wrapped(psycopg.errors.DeadlockDetected("deadlock")),
    wrapped(psycopg.errors.SerializationFailure("conflict")),
    wrapped(psycopg.errors.LockNotAvailable("lock timeout")),
    wrapped(psycopg.errors.QueryCanceled("statement timeout")),
    wrapped(psycopg.errors.AdminShutdown("terminating")),
    wrapped(psycopg.errors.TooManyConnections("too many")),
    psycopg.OperationalError("connection lost"),  # raised by the client: no SQLSTATE
    sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
    redis.ConnectionError("refused"),
    redis.TimeoutError("timed out"),
    ConnectionResetError("reset by peer"),
    TimeoutError("timed out"),
    TimeLimitExceeded(),
    Shutdown(),
]
PERMANENT = [
    wrapped(psycopg.errors.CheckViolation("check")),
    wrapped(psycopg.errors.UniqueViolation("duplicate key")),
    wrapped(psycopg.errors.UntranslatableCharacter("NUL")),
    wrapped(psycopg.errors.UndefinedColumn("no such column")),
    wrapped(psycopg.errors.InsufficientPrivilege("denied")),
    redis.ResponseError("WRONGTYPE"),
    UnknownTenant("no tenant"),
    ValueError("bad value"),
    KeyError("missing"),
    RuntimeError("a bug"),
    ZeroDivisionError("a bug"),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: type(getattr(e, "orig", None) or e).__name__)
def test_failures_about_the_moment_are_retryable(exc: BaseException) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(getattr(e, "orig", None) or e).__name__)
def test_everything_else_is_permanent_unrecognised_included(exc: BaseException) -> None:
    assert not is_retryable(exc)
