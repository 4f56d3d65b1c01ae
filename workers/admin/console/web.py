"""How one console request runs: who is signed in, the CSRF check, the form, the page, the error page.

A page handler is a plain function of a `Visit` (run in a worker thread, since it talks to the database).
It acts through the admin API's own handlers (`workers.admin.tenants`, `workers.admin.operations`) with a
`Call` built here, so a change made in the console passes the same checks, runs on the same tenant-bound
connection (row-level security) and writes the same audit row as the same change made through the API.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

import psycopg
import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from db.schema import api_keys, tenants
from pipelines.control.errors import Invalid, NotFound
from pipelines.control.fields import field_errors
from pipelines.control.keys import Principal
from pipelines.errors import BodyTooLarge, Refusal, failure_status, underlying
from workers.admin.console.sessions import COOKIE, Session, Sessions
from workers.admin.http import Call, owned, read_body, request_id
from workers.admin.state import Admin

log = structlog.get_logger("intake.console")

TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 262_144
MAX_FORM_FIELDS = 1200
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
# Everything is served from here: no inline script, no inline style, no other origin, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Console:
    """What the console's pages share: the admin process's state, the sessions and the templates."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.sessions = Sessions()
        self.templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                                     undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(when=when, short=short, pair=lambda value: (value, value))

    def render(self, template: str, code: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(**context)
        return secured(HTMLResponse(html, status_code=code))

    def still_valid(self, principal: Principal) -> bool:
        """The session's key has not been revoked since sign-in, nor its tenant disabled."""
        with self.admin.owner_engine.connect() as conn:
            found = conn.execute(select(api_keys.c.revoked_at, tenants.c.disabled_at)
                                 .select_from(api_keys.outerjoin(tenants, tenants.c.id == api_keys.c.tenant_id))
                                 .where(api_keys.c.id == principal.key_id)).first()
        return found is not None and found.revoked_at is None and found.disabled_at is None


def when(value: datetime | None) -> str:
    """A time as operators compare them across machines: UTC, to the second."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(value: object) -> str:
    """The first block of an id: enough to tell rows apart on a page, the whole id is one click away."""
    return str(value)[:8]


R = TypeVar("R", bound=Response)


def secured(response: R) -> R:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class BadForm(Refusal):
    """The form is not UTF-8 URL-encoded text."""

    status, code = 400, "bad_form"

    def __init__(self) -> None:
        super().__init__("The form is not URL-encoded UTF-8 text.")


# The title of the page that answers a refusal, by its status.
TITLES = {400: "Bad form", 403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Too large", 422: "Invalid"}


@dataclass
class Visit:
    """One signed-in request: the session, the parsed form (for a POST), and helpers to act and answer."""

    console: Console
    request: Request
    session: Session
    rid: str
    form: dict[str, list[str]] = field(default_factory=dict)

    @property
    def principal(self) -> Principal:
        return self.session.principal

    @property
    def admin(self) -> Admin:
        return self.console.admin

    def value(self, name: str) -> str:
        """A form field (or, for a GET, a query parameter), stripped; '' when absent."""
        values = self.form.get(name) if self.request.method == "POST" else self.request.query_params.getlist(name)
        return (values or [""])[0].strip()

    def values(self, name: str) -> list[str]:
        return self.form.get(name, []) if self.request.method == "POST" else self.request.query_params.getlist(name)

    def call(self, *, body: BaseModel | None = None, query: BaseModel | None = None,
             ids: dict[str, uuid.UUID] | None = None, owner: tuple[str, uuid.UUID] | None = None) -> Call:
        """A call of the admin API's handlers; with `owner` (kind, id), acting on the tenant that owns it. A page
        read (GET) runs under the API's statement timeout, as the API's reads do."""
        timeout = self.admin.settings.admin_statement_timeout_ms if self.request.method == "GET" else None
        call = Call(self.admin, self.principal, self.rid, ids or {}, body=body, query=query,
                    tenant=self.principal.tenant_id, statement_timeout_ms=timeout)
        if owner is not None:
            call.tenant = self.owner(*owner)
        return call

    def owner(self, kind: str, object_id: uuid.UUID) -> uuid.UUID | None:
        """The tenant an object belongs to; to a tenant key, another tenant's object is not found (as the API
        answers it: `workers.admin.http.owned`)."""
        with self.admin.owner_engine.connect() as conn:
            return owned(conn, self.principal, kind, object_id)

    def render(self, template: str, code: int = 200, **context: Any) -> HTMLResponse:
        return self.console.render(template, code, principal=self.principal, csrf=self.session.csrf,
                                   path=self.request.url.path, query=self.request.query_params, link=self.link,
                                   **context)

    def link(self, **changes: object) -> str:
        """This page's URL with some query parameters changed (an empty value drops one)."""
        params = {k: v for k, v in self.request.query_params.items() if k not in changes}
        params.update({k: str(v) for k, v in changes.items() if v not in (None, "")})
        return self.request.url.path + ("?" + urlencode(params) if params else "")

    def fragment(self, template: str, **context: Any) -> HTMLResponse:
        """A part of a page that a script fetches to refresh it."""
        return self.console.render(template, principal=self.principal, csrf=self.session.csrf, **context)


def redirect(url: str, **params: str) -> Response:
    """303 to a page of the console (only ever a path of ours, never one the request named)."""
    assert url.startswith("/") and not url.startswith("//")
    target = url + ("?" + urlencode({k: v for k, v in params.items() if v}) if params else "")
    return secured(RedirectResponse(target, status_code=303))


def parse_uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no such {what}") from None


def offset_of(raw: str) -> int:
    """The offset a pager shows: ASCII digits as given, anything else 0 (`str.isdigit` also takes "²",
    which `int` refuses)."""
    return int(raw) if raw.isascii() and raw.isdigit() else 0


def checked(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """`raw` validated by one of the API's models: Invalid carries the messages for each field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise Invalid(field_errors(exc)) from None


def nested(pairs: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Form fields named `prefix.a.b` as `{"a": {"b": value}}`; an empty field is None (the setting is
    removed) and a group whose fields are all empty is None too."""
    tree: dict[str, Any] = {}
    for name, value in pairs.items():
        if not name.startswith(prefix + "."):
            continue
        node = tree
        *parents, leaf = name[len(prefix) + 1:].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value if value != "" else None
    return {k: (None if isinstance(v, dict) and all(x is None for x in v.values()) else v) for k, v in tree.items()}


async def read_form(request: Request) -> dict[str, list[str]]:
    """The form, refused with BodyTooLarge past MAX_FORM_BYTES and BadForm unless URL-encoded UTF-8."""
    body = await read_body(request, MAX_FORM_BYTES)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise BadForm
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS,
                        errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BadForm from None


Handler = Callable[[Visit], Response]


def page(console: Console, handler: Handler, *, fragment: bool = False) -> Callable[[Request], Any]:
    """The Starlette endpoint of a console page: signed in or sent to sign in; every POST carries the
    session's CSRF token (form field `csrf` or header `X-CSRF-Token`) or is refused with 403."""

    async def run(request: Request) -> Response:
        rid = request_id(request)
        session = console.sessions.get(request.cookies.get(COOKIE))
        if session is not None and not await run_in_threadpool(console.still_valid, session.principal):
            console.sessions.end_key(session.principal.key_id)
            session = None
        if session is None:
            if fragment or request.method == "POST":
                return console.render("error.html", 401, status=401, title="Signed out",
                                      detail="Your session has ended. Sign in again.", principal=None)
            return redirect("/login")
        try:
            form = await read_form(request) if request.method == "POST" else {}
        except Refusal as exc:
            return _failure(console, session, exc, rid)
        except ClientDisconnect:
            return _error(console, session, 400, "Incomplete", "The form was not received in full.")
        if request.method == "POST":
            presented = (form.get(CSRF_FIELD) or [request.headers.get(CSRF_HEADER, "")])[0]
            if not session.csrf_matches(presented):
                return _error(console, session, 403, "Refused",
                              "This form's CSRF token is missing or out of date. Reload the page and try again.")
        visit = Visit(console, request, session, rid, form)
        try:
            return await run_in_threadpool(handler, visit)
        except Exception as exc:
            return _failure(console, session, exc, rid)

    return run


def _error(console: Console, session: Session | None, status: int, title: str, detail: str) -> Response:
    return console.render("error.html", status, status=status, title=title, detail=detail,
                          principal=session.principal if session else None, csrf=session.csrf if session else "",
                          path="", query={})


def _failure(console: Console, session: Session, exc: Exception, rid: str) -> Response:
    """The page for an error: a refusal with its own status (as the API answers it), a page read past its
    statement timeout 503, and anything else 503 or 500 as `failure_status` decides (the API's policy)."""
    if isinstance(exc, Refusal):
        detail = f"The form exceeds {exc.limit} bytes." if isinstance(exc, BodyTooLarge) else str(exc)
        return _error(console, session, exc.status, TITLES.get(exc.status, "Refused"), detail)
    if isinstance(underlying(exc), psycopg.errors.QueryCanceled):
        log.warning("console.statement_timeout", request_id=rid)
        return _error(console, session, 503, "Too slow", "The database took longer than a page may take "
                      "(INTAKE_ADMIN_STATEMENT_TIMEOUT_MS). Narrow the filter, or retry later.")
    if failure_status(exc) == 503:
        log.error("console.unavailable", error=repr(exc), request_id=rid)
        return _error(console, session, 503, "Unavailable", "The database or Redis is unavailable; retry later.")
    error_id = uuid.uuid4().hex[:16]
    log.error("console.internal_error", error_id=error_id, request_id=rid,
              traceback="".join(traceback.format_exception(exc)))
    return _error(console, session, 500, "Internal error", f"An internal error occurred; error id {error_id}.")
