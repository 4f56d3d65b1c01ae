"""One error policy at every edge: a refusal carries its own status and code, one helper makes the body and one
decides 500 or 503, and credentials are scrubbed from every log line of every process (the admin API's and the
console's tracebacks included), by the log's own processor.

The log tests run the admin app in a child process configured as `intake admin` configures it, so the
processor chain is the production one, and read what it writes on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.control.errors import Conflict, Forbidden, Invalid, NotFound
from pipelines.errors import (
    BodyTooLarge,
    MalformedJson,
    Refusal,
    error_body,
    explained,
    failure_status,
    refusal_body,
)

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-s3cret"
DSN = f"postgresql://intake:{PASSWORD}@db.internal:5432/intake"

# A child process: logging as `intake admin` sets it up, an app with one route that fails the way a lost
# database connection fails (its message quoting the DSN), one request through real HTTP handling (ASGI).
CHILD = """
import asyncio, sys
import httpx
from starlette.routing import Route
from config import get_settings
from config.logging import configure_logging
from workers.admin.app import create_app

configure_logging(sys.argv[1], "info")

async def broken(request):
    raise RuntimeError("connection to {dsn} failed: password authentication failed")

async def main():
    unused = "postgresql://unused@/unused"
    app = create_app(get_settings(), database_url=unused, admin_database_url=unused,
                     secret_key="unused-secret-key", routes=[Route("/broken", broken)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        answer = await client.get("/broken")
    print(answer.status_code, answer.text)

asyncio.run(main())
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_password_in_an_error_logged_by_the_admin_api_never_reaches_the_log(fmt: str) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD.replace("{dsn}", DSN), fmt], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    status, _, body = done.stdout.strip().partition(" ")
    assert status == "500" and json.loads(body)["error"] == "internal_error", done.stdout + done.stderr
    assert "admin.internal_error" in done.stderr and "Traceback" in done.stderr, done.stderr
    assert "intake:***@db.internal" in done.stderr, done.stderr  # the DSN is there, its password is not
    assert PASSWORD not in done.stderr and PASSWORD not in done.stdout


def test_every_refusal_carries_its_answer() -> None:
    answers = {NotFound("no inbox x"): (404, "not_found"), Forbidden("no"): (403, "forbidden"),
               Conflict("taken"): (409, "conflict"), Invalid({"name": "Field required"}): (422, "invalid"),
               BodyTooLarge(65_536): (413, "payload_too_large"), MalformedJson(): (400, "malformed_json")}
    for exc, (status, code) in answers.items():
        assert (exc.status, exc.code) == (status, code)
        assert refusal_body(exc)["error"] == code and explained(exc)
    assert refusal_body(Invalid({"name": "Field required"})) == {
        "error": "invalid", "detail": "some fields are invalid", "fields": {"name": "Field required"}}
    assert refusal_body(BodyTooLarge(10)) == error_body("payload_too_large", "the body exceeds 10 bytes")


def test_one_function_decides_500_or_503() -> None:
    import psycopg

    assert failure_status(psycopg.OperationalError("server closed the connection")) == 503
    assert failure_status(ConnectionRefusedError()) == 503
    assert failure_status(KeyError("a bug")) == 500
    assert failure_status(NotFound("x")) == 500  # a refusal nobody answered is a bug at that edge, not "retry"
    assert not explained(KeyError("a bug")) and not explained(RuntimeError(DSN))


def test_the_cli_prints_what_is_explained_and_nothing_else() -> None:
    from db.tenancy import UnknownTenant
    from pipelines.crypto import SecretKeyError
    from pipelines.errors import UnknownTenantError
    from workers.cli.common import BadInput
    from workers.embedded.runtime import ServicesUnavailable

    for exc in (BadInput("use a number"), SecretKeyError("wrong key"), ServicesUnavailable("down"),
                UnknownTenant("no tenant"), UnknownTenantError("no tenant")):
        assert explained(exc), exc
    assert isinstance(UnknownTenantError("x"), UnknownTenant)  # one class to catch
    assert issubclass(BadInput, Refusal)
