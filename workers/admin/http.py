"""What one admin API call is: the declaration of an endpoint, and the call its handler receives.

An endpoint is declared once (`Endpoint`: method, path, models, who may call it, which id names the tenant
acted on); `workers.admin.api` turns each declaration into a FastAPI route, whose dependencies authenticate,
authorise and find the tenant acted on, and whose OpenAPI document FastAPI writes from the same models. A
handler is a plain function of a `Call`, so the console calls the very same handlers with a `Call` of its own.

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
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, text
from starlette.requests import Request
from starlette.responses import Response

from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.control.common import owner_of
from pipelines.control.errors import NotFound
from pipelines.control.keys import Principal
from pipelines.errors import BodyTooLarge
from workers.admin.state import Admin

MAX_BODY_BYTES = 65_536
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
# Transaction-local, like the tenant: a pooled connection never carries it over to a job's work.
STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


class ErrorBody(BaseModel):
    error: str
    detail: str


class InvalidBody(ErrorBody):
    fields: dict[str, str]


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
        raise BodyTooLarge(limit, unread=True)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def owned(conn: Connection, principal: Principal, kind: str, object_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant an object belongs to. Another tenant's object is, to a tenant key, no object at all: the
    same NotFound as an id that does not exist, so the answer tells nothing about other tenants."""
    tenant = owner_of(conn, kind, object_id)
    if not principal.operator and tenant != principal.tenant_id:
        raise NotFound(f"no {kind} {object_id}")
    return tenant
