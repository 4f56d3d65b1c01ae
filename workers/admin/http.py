"""How one admin API call runs: authenticate, authorise, validate, act in a tenant-bound transaction, answer.

An endpoint is declared once (`Endpoint`: method, path, models, who may call it, which id names the tenant
acted on); the same declaration builds the route and its part of the OpenAPI document, so the document
cannot drift from what the API does.

Tenancy is enforced twice. First by route: the tenant an id belongs to is looked up (as the maintenance
role) and a tenant key reaching another tenant's id gets the 404 of an id that does not exist, word for
word, so that no answer tells a tenant key whether an id exists elsewhere. Then by the database: a tenant
key's work runs on the fleet's role with its own tenant bound in the transaction, so row-level security
shows it nothing else even where a route check were missing. An operator key's work runs as the schema
owner, bound to the tenant acted on when there is one. A key of a disabled tenant is refused everything,
reads included (403), until an operator enables the tenant again.

Every error has the ingress's body, `{"error": code, "detail": text}`; 422 adds
`"fields": {"<field path>": "<message>"}`. A handler answers with a model (JSON) or, for a download, with a
Response of its own. Every answer carries `Cache-Control: no-store`: each holds a secret shown once (a key,
an inbox's secrets) or a tenant's data, and neither belongs in a cache.

Each key has a token bucket of requests (INTAKE_ADMIN_RATE_LIMIT_PER_SECOND, INTAKE_ADMIN_RATE_LIMIT_BURST),
charged once the key is known, so one busy or runaway key gets 429 with Retry-After and never spends another
key's requests. A read (GET) runs under INTAKE_ADMIN_STATEMENT_TIMEOUT_MS: a statement that takes longer is
cancelled and answered 503 `statement_timeout`, so a costly filter cannot hold a connection and a core for
minutes.
"""

from __future__ import annotations

import re
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.control.common import owner_of
from pipelines.control.errors import Conflict, ControlError, Forbidden, Invalid, NotFound
from pipelines.control.fields import field_errors
from pipelines.control.keys import Principal
from pipelines.errors import PermanentError, is_retryable, underlying
from workers.admin.state import Admin

log = structlog.get_logger("intake.admin")

MAX_BODY_BYTES = 65_536
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
UNAUTHORIZED = {"error": "unauthorized", "detail": "a valid API key is required: Authorization: Bearer ik_..."}
DISABLED = "this key's tenant is disabled: its keys are refused until an operator enables it again"
STATUS = {NotFound: (404, "not_found"), Forbidden: (403, "forbidden"), Conflict: (409, "conflict"),
          Invalid: (422, "invalid")}
# Transaction-local, like the tenant: a pooled connection never carries it over to a job's work.
STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


class ErrorBody(BaseModel):
    error: str
    detail: str


class InvalidBody(ErrorBody):
    fields: dict[str, str]


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Callable[[Call], BaseModel | Response]
    # None: the handler answers with a Response of `media_type` (a download).
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    operator_only: bool = False
    # (kind, path parameter): the tenant acted on is the one this id belongs to.
    owner: tuple[str, str] | None = None
    media_type: str = "application/json"
    # Path parameters that are one of a few words (an SLA priority), not ids: name -> the words.
    path_choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Required request headers (an Idempotency-Key): name -> (pattern the value must match, description).
    headers: Mapping[str, tuple[re.Pattern[str], str]] = field(default_factory=dict)
    max_body: int = MAX_BODY_BYTES
    # Other success codes the handler answers with the same model (a replayed request's 200).
    also: Mapping[int, str] = field(default_factory=dict)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


@dataclass
class Call:
    """One authenticated call: who, which ids, the validated body and query, and the tenant acted on."""

    admin: Admin
    principal: Principal
    request_id: str
    ids: dict[str, uuid.UUID]
    body: Any = None
    query: Any = None
    tenant: uuid.UUID | None = None
    params: dict[str, str] = field(default_factory=dict)  # the path's words (`Endpoint.path_choices`)
    # Set for reads: each statement of this call's transactions is cancelled after this many milliseconds.
    statement_timeout_ms: int | None = None
    # The request's headers (a stream's Last-Event-ID); for an endpoint that declares headers, those, checked.
    headers: Mapping[str, str] = field(default_factory=dict)
    _bound: list[Connection] = field(default_factory=list)

    @property
    def actor(self) -> audit.Actor:
        return self.principal.actor(self.request_id)

    def scope_tenant(self, requested: uuid.UUID | None) -> uuid.UUID | None:
        """The tenant a filter may name: a tenant key's own (another is refused), an operator's any."""
        if self.principal.operator:
            return requested
        if requested is not None and requested != self.principal.tenant_id:
            raise NotFound(f"no tenant {requested}")  # the answer for a tenant that does not exist
        return self.principal.tenant_id

    @property
    def bound(self) -> TenantBound:
        """Where this caller's work runs: a tenant key's on the fleet's role with its tenant bound in every
        transaction; an operator's as the owner, bound to the tenant acted on when there is one."""
        if self.principal.tenant_id is not None:
            return TenantBound(self.admin.app_engine, TenantId(self.principal.tenant_id), self.statement_timeout_ms)
        return TenantBound(self.admin.owner_engine, None if self.tenant is None else TenantId(self.tenant),
                           self.statement_timeout_ms)

    def transaction(self) -> AbstractContextManager[Connection]:
        return self.bound.begin()


@dataclass(frozen=True)
class TenantBound:
    """An engine whose every transaction is bound to one tenant (or to none, for an operator's
    cross-tenant work). It has the one method the operator tools call on an engine, `begin`."""

    engine: Engine
    tenant: TenantId | None
    statement_timeout_ms: int | None = None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            if self.statement_timeout_ms is not None:
                conn.execute(STATEMENT_TIMEOUT, {"ms": str(self.statement_timeout_ms)})
            if self.tenant is not None:
                bind_tenant(conn, self.tenant)
            yield conn


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else uuid.uuid4().hex


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, refused with BodyTooLarge as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class BodyTooLarge(PermanentError):
    """The body is over MAX_BODY_BYTES."""


def validate(model: type[BaseModel], raw: bytes | dict[str, Any], where: str) -> BaseModel:
    try:
        if isinstance(raw, bytes):
            return model.model_validate_json(raw or b"{}")
        return model.model_validate(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise MalformedJson from None
        if where == "body" and any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise Invalid({"body": "must be a JSON object"}) from None
        raise Invalid(field_errors(exc)) from None


class MalformedJson(PermanentError):
    """The body is not JSON."""


def declared_headers(endpoint: Endpoint, request: Request) -> dict[str, str]:
    """The endpoint's required headers, each checked against its pattern (a refusal names the header)."""
    found, wrong = {}, {}
    for name, (pattern, description) in endpoint.headers.items():
        value = request.headers.get(name)
        if value is None or not pattern.fullmatch(value):
            wrong[name] = f"{'required' if value is None else 'invalid'}: {description}"
        else:
            found[name] = value
    if wrong:
        raise Invalid(wrong)
    return found


def resolve_owner(admin: Admin, endpoint: Endpoint, principal: Principal, ids: dict[str, uuid.UUID],
                  ) -> uuid.UUID | None:
    """The tenant acted on, looked up by the id in the path; a tenant key may only reach its own."""
    if endpoint.owner is None:
        return principal.tenant_id
    kind, param = endpoint.owner
    with admin.owner_engine.connect() as conn:
        return owned(conn, principal, kind, ids[param])


def owned(conn: Connection, principal: Principal, kind: str, object_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant an object belongs to. Another tenant's object is, to a tenant key, no object at all: the
    same NotFound as an id that does not exist, so the answer tells nothing about other tenants."""
    tenant = owner_of(conn, kind, object_id)
    if not principal.operator and tenant != principal.tenant_id:
        raise NotFound(f"no {kind} {object_id}")
    return tenant


def handle(admin: Admin, endpoint: Endpoint) -> Callable[[Request], Any]:
    """The Starlette endpoint for one declared endpoint."""

    async def run(request: Request) -> Response:
        rid = request_id(request)
        try:
            response = await _run(request, rid)
        except ClientDisconnect:
            response = error(400, "client_disconnected", "the request body was not received in full")
        except Exception as exc:
            response = failure(exc, rid)
        response.headers["x-request-id"] = rid
        response.headers["cache-control"] = "no-store"
        return response

    async def _run(request: Request, rid: str) -> Response:
        key = bearer(request)
        principal = await run_in_threadpool(admin.authenticate, key)
        if principal is None:
            return JSONResponse(UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        settings = admin.settings
        wait = admin.key_buckets.take(principal.key_id, settings.admin_rate_limit_per_second,
                                      settings.admin_rate_limit_burst)
        if wait:
            log.warning("admin.rate_limited", key_id=str(principal.key_id), request_id=rid)
            return error(429, "rate_limited", f"this key made more than {settings.admin_rate_limit_burst} requests "
                         f"at {settings.admin_rate_limit_per_second:g} a second; retry after Retry-After seconds",
                         headers={"Retry-After": admin.key_buckets.retry_after(wait)})
        try:
            if principal.tenant_disabled:
                raise Forbidden(DISABLED)
            if endpoint.operator_only and not principal.operator:
                raise Forbidden("this needs an operator key")
            ids, params = {}, {}
            for name in endpoint.path_params:
                value = str(request.path_params[name])
                if name in endpoint.path_choices:
                    if value not in endpoint.path_choices[name]:
                        raise NotFound(f"no such {name}: use one of {', '.join(endpoint.path_choices[name])}")
                    params[name] = value
                    continue
                try:
                    ids[name] = uuid.UUID(value)
                except ValueError:
                    raise NotFound(f"no such {name.removesuffix('_id')}") from None
            call = Call(admin, principal, rid, ids, params=params, headers=request.headers,
                        statement_timeout_ms=settings.admin_statement_timeout_ms if endpoint.method == "GET" else None)
            if endpoint.query is not None:
                call.query = validate(endpoint.query, dict(request.query_params), "query")
            if endpoint.headers:
                call.headers = declared_headers(endpoint, request)
            if endpoint.body is not None:
                call.body = validate(endpoint.body, await read_body(request, endpoint.max_body), "body")
            call.tenant = await run_in_threadpool(resolve_owner, admin, endpoint, principal, ids)
            result = await run_in_threadpool(endpoint.handler, call)
        except BodyTooLarge:
            return error(413, "payload_too_large", f"the body exceeds {endpoint.max_body} bytes")
        except MalformedJson:
            return error(400, "malformed_json", "the body is not valid JSON")
        except Invalid as exc:
            return error(422, "invalid", "some fields are invalid", fields=exc.fields)
        except ControlError as exc:
            status, code = next(v for k, v in STATUS.items() if isinstance(exc, k))
            return error(status, code, str(exc))
        if isinstance(result, Response):
            return result
        return JSONResponse(result.model_dump(mode="json"), status_code=endpoint.status)

    return run


def failure(exc: BaseException, rid: str) -> JSONResponse:
    """503 when a read ran past its statement timeout or a dependency is unavailable, else 500 with an error
    id logged with its traceback."""
    if isinstance(underlying(exc), psycopg.errors.QueryCanceled):
        log.warning("admin.statement_timeout", request_id=rid)
        return error(503, "statement_timeout", "the database took longer than this read may take "
                     "(INTAKE_ADMIN_STATEMENT_TIMEOUT_MS); narrow it (a filter, a smaller page) or retry later",
                     headers={"Retry-After": "5"})
    if is_retryable(exc):
        log.error("admin.unavailable", error=repr(exc), request_id=rid)
        return error(503, "unavailable", "the database is unavailable; retry later")
    error_id = uuid.uuid4().hex[:16]
    log.error("admin.internal_error", error_id=error_id, request_id=rid,
              traceback="".join(traceback.format_exception(exc)))
    return error(500, "internal_error", f"an internal error occurred; error id {error_id}")

