"""The admin API on FastAPI: every declared endpoint (`http.Endpoint`) becomes a FastAPI route.

FastAPI because it is the ecosystem's convention for JSON APIs over pydantic models: it validates the path,
the query, the headers and the body with the same models that shape the answers, and writes the OpenAPI
document (`GET /v1/admin/openapi.json`) from them, so the document cannot drift from what the API does.

Who may call a route is a chain of dependencies, run in this order before the handler:
`principal` (the key: 401 without a valid one; its request bucket: 429 with Retry-After; its tenant disabled:
403), `allowed` (an operator-only route refuses a tenant key: 403; a path word outside its few: 404), then
`owner` (the tenant acted on, found by the id in the path; a tenant key reaching another tenant's id gets the
404 of an id that does not exist, word for word). The handler then runs in a worker thread on a `Call`
whose transactions are bound to that tenant (row-level security), its audit row in the same transaction.

`AdminRoute` is the one edge of every route: it gives the answer a request id (`X-Request-ID`, the client's
when it is sane) and `Cache-Control: no-store`, reads a body within the route's limit (413), and answers every
error with `{"error": code, "detail": text}`: a refusal (`pipelines.errors.Refusal`) with its own status and
code, FastAPI's validation errors as 400 `malformed_json` or 422 `invalid` with `"fields": {path: message}`,
a read past its statement timeout 503 `statement_timeout`, and anything else 503 or 500 as
`pipelines.errors.failure_status` decides.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies of the nested functions below from
# their annotations, which name closures that a string annotation could not find.
import inspect
import json
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any

import psycopg
import pydantic_core
import structlog
from fastapi import APIRouter, Body, Depends, Header, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from pipelines.control.errors import Forbidden, Invalid, NotFound
from pipelines.control.fields import field_errors
from pipelines.control.keys import Principal
from pipelines.errors import MalformedJson, Refusal, error_body, failure_status, refusal_body, underlying
from workers.admin.http import MAX_BODY_BYTES, Call, Endpoint, ErrorBody, InvalidBody, owned, read_body, request_id
from workers.admin.state import Admin

log = structlog.get_logger("intake.admin")

DISABLED = "this key's tenant is disabled: its keys are refused until an operator enables it again"
ERRORS = {
    400: "The body is not JSON", 401: "No valid API key", 403: "The key may not act on this tenant",
    404: "No such object", 409: "Conflicts with what is stored", 413: "The body is too large",
    429: "This key made too many requests: retry after Retry-After seconds",
}
_bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer ik_...")


class Unauthorized(Refusal):
    """No valid API key."""

    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self) -> None:
        super().__init__("a valid API key is required: Authorization: Bearer ik_...")


class RateLimited(Refusal):
    """This key spent its request bucket; `headers` says when to come back."""

    status, code = 429, "rate_limited"


def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def refused(exc: Refusal) -> JSONResponse:
    return answer(exc.status, refusal_body(exc), dict(exc.headers) or None)


def invalid(exc: RequestValidationError, headers: dict[str, tuple[str, str]],
            body: type[BaseModel] | None) -> JSONResponse:
    """FastAPI's validation errors in the API's shape: 400 for a body that is not JSON, else 422 naming
    each field by its dotted path; a header by its name (`headers`: lower-case name -> name, meaning); a
    JSON null as `{}` would be (each required field named)."""
    errors = list(exc.errors())
    if any(e["type"] == "json_invalid" for e in errors):
        return refused(MalformedJson())
    fields: dict[str, str] = {}
    for e in errors:
        where, *loc = [str(part) for part in e["loc"]] or ["body"]
        if where == "header" and loc and loc[0].lower() in headers:
            name, meaning = headers[loc[0].lower()]
            fields[name] = f"{'required' if e['type'] == 'missing' else 'invalid'}: {meaning}"
        elif where == "body" and not loc and e["type"] == "missing" and body is not None:
            try:
                body.model_validate({})
            except ValidationError as empty:
                fields.update(field_errors(empty))
        elif where == "body" and not loc:
            fields["body"] = "must be a JSON object"
        else:
            fields.setdefault(".".join(loc) or where, str(e["msg"]).removeprefix("Value error, "))
    return refused(Invalid(fields))


def failure(exc: BaseException, rid: str) -> JSONResponse:
    """503 when a read ran past its statement timeout or a dependency is unavailable, else 500 with an error
    id logged with its traceback (scrubbed of credentials by the log's own processor)."""
    if isinstance(underlying(exc), psycopg.errors.QueryCanceled):
        log.warning("admin.statement_timeout", request_id=rid)
        return answer(503, error_body("statement_timeout", "the database took longer than this read may take "
                                      "(INTAKE_ADMIN_STATEMENT_TIMEOUT_MS); narrow it (a filter, a smaller page) "
                                      "or retry later"), {"Retry-After": "5"})
    if failure_status(exc) == 503:
        log.error("admin.unavailable", error=repr(exc), request_id=rid)
        return answer(503, error_body("unavailable", "the database is unavailable; retry later"))
    error_id = uuid.uuid4().hex[:16]
    log.error("admin.internal_error", error_id=error_id, request_id=rid,
              traceback="".join(traceback.format_exception(exc)))
    return answer(500, error_body("internal_error", f"an internal error occurred; error id {error_id}"))


class AdminRoute(APIRoute):
    """A route of the admin API: request id, no-store, the body limit, and every error answered alike.

    A route's endpoint may carry `max_body` (its body limit), `header_help` (each declared header's meaning,
    for its 422) and `body_model` (to name the fields a missing body lacks). HEAD is answered wherever GET
    is (without a body: the server sends none)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit: int = getattr(self.endpoint, "max_body", MAX_BODY_BYTES)
        header_help: dict[str, tuple[str, str]] = getattr(self.endpoint, "header_help", {})
        body_model: type[BaseModel] | None = getattr(self.endpoint, "body_model", None)
        reads_body = self.body_field is not None

        async def run(request: Request) -> Response:
            rid = request_id(request)
            request.state.request_id = rid
            try:
                if reads_body:
                    request = _replaying(request, await read_body(request, limit) or b"{}")
                response = await handler(request)
            except Refusal as exc:
                response = refused(exc)
            except RequestValidationError as exc:
                response = invalid(exc, header_help, body_model)
            except ClientDisconnect:
                response = answer(400, error_body("client_disconnected", "the request body was not received in full"))
            except Exception as exc:
                response = failure(exc, rid)
            response.headers["x-request-id"] = rid
            response.headers["cache-control"] = "no-store"
            return response

        return run

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD" and "GET" in (self.methods or ()):
            await self.app(scope, receive, send)
        else:
            await super().handle(scope, receive, send)

    def matches(self, scope: Scope) -> Any:
        if scope.get("type") == "http" and scope.get("method") == "HEAD" and "GET" in (self.methods or ()):
            scope = {**scope, "method": "GET"}
        return super().matches(scope)


def _replaying(request: Request, body: bytes) -> Request:
    """The request again, its body already read (within the limit) and handed to FastAPI as it asks. The
    API's bodies are JSON whatever the Content-Type says (or if it says nothing): a body that is not is 400;
    no body at all is `{}` (every field at its default, or each required one named in the 422)."""
    sent = False
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return JsonRequest(scope, receive)


class JsonRequest(Request):
    """A request whose JSON is read by pydantic's parser (the one `model_validate_json` uses), not the
    standard library's: a lone surrogate or nesting past its depth limit is not JSON (400), as it never was."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                self._json = pydantic_core.from_json(raw)
            except ValueError as exc:
                raise json.JSONDecodeError(str(exc), raw.decode("utf-8", "replace"), 0) from None
        return self._json


def router(admin: Admin, declared: Sequence[Endpoint]) -> APIRouter:
    """The API's routes: fixed paths before those with ids, so /failures/replay is never a failure's id."""
    api = APIRouter(route_class=AdminRoute)

    async def principal(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        """The caller, known by its key; its request bucket charged (on the event loop, where buckets live)."""
        key = credentials.credentials.strip() if credentials is not None else None
        found = await run_in_threadpool(admin.authenticate, key or None)
        if found is None:
            raise Unauthorized
        settings = admin.settings
        wait = admin.key_buckets.take(found.key_id, settings.admin_rate_limit_per_second,
                                      settings.admin_rate_limit_burst)
        if wait:
            log.warning("admin.rate_limited", key_id=str(found.key_id), request_id=request.state.request_id)
            exc = RateLimited(f"this key made more than {settings.admin_rate_limit_burst} requests at "
                              f"{settings.admin_rate_limit_per_second:g} a second; retry after Retry-After seconds")
            exc.headers = {"Retry-After": admin.key_buckets.retry_after(wait)}
            raise exc
        if found.tenant_disabled:
            raise Forbidden(DISABLED)
        return found

    for e in sorted(declared, key=lambda e: e.path.count("{")):
        api.add_api_route(
            _route_path(e), _endpoint(admin, e, principal), methods=[e.method], summary=e.summary,
            operation_id=f"{e.method.lower()}_{e.handler.__name__}", status_code=e.status,
            response_model=e.response, response_class=JSONResponse if e.response is not None else Response,
            responses=_responses(e),
        )
    return api


def _route_path(e: Endpoint) -> str:
    """Ids match only as UUIDs (GET /failures/discard is a 405, not a failure); a word matches any segment,
    and `allowed` checks it."""
    path = e.path
    for name in e.path_params:
        if name not in e.path_choices:
            path = path.replace(f"{{{name}}}", f"{{{name}:uuid}}")
    return path


def _responses(e: Endpoint) -> dict[int | str, dict[str, Any]]:
    found: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody, "description": text}
                                              for code, text in ERRORS.items()}
    found[422] = {"model": InvalidBody, "description": "Some fields are invalid: `fields` names each"}
    if e.response is None:
        found[e.status] = {"description": e.summary,
                           "content": {e.media_type: {"schema": {"type": "string", "format": "binary"}}}}
    for code, text in e.also.items():
        found[code] = {"model": e.response, "description": text}
    return found


def _endpoint(admin: Admin, e: Endpoint, principal: Callable[..., Awaitable[Principal]]) -> Callable[..., Any]:
    """The FastAPI endpoint of one declaration: its signature names the dependencies and the parameters that
    FastAPI validates and documents; its body builds the `Call` and runs the handler in a worker thread."""
    ids = [name for name in e.path_params if name not in e.path_choices]
    timeout = admin.settings.admin_statement_timeout_ms if e.method == "GET" else None

    async def allowed(request: Request, caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if e.operator_only and not caller.operator:
            raise Forbidden("this needs an operator key")
        for name, words in e.path_choices.items():
            if request.path_params[name] not in words:
                raise NotFound(f"no such {name}: use one of {', '.join(words)}")
        return caller

    def owner(request: Request, caller: Annotated[Principal, Depends(allowed)]) -> uuid.UUID | None:
        if e.owner is None:
            return caller.tenant_id
        kind, param = e.owner
        with admin.owner_engine.connect() as conn:
            return owned(conn, caller, kind, request.path_params[param])

    params = [
        inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
        inspect.Parameter("caller", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Principal, Depends(allowed)]),
        inspect.Parameter("tenant", inspect.Parameter.KEYWORD_ONLY,
                          annotation=Annotated[uuid.UUID | None, Depends(owner)]),
    ]
    for name in e.path_params:
        kind: Any = str if name in e.path_choices else uuid.UUID
        extra = {"enum": list(e.path_choices[name])} if name in e.path_choices else None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[kind, Path(json_schema_extra=extra)]))
    if e.query is not None:
        params.append(inspect.Parameter("query", inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[e.query, Query()]))
    headers: dict[str, tuple[str, str]] = {}
    for i, (name, (pattern, description)) in enumerate(e.headers.items()):
        headers[name.lower()] = (name, description)
        params.append(inspect.Parameter(f"header_{i}", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
            str, Header(alias=name, pattern=f"^(?:{pattern.pattern})$", description=description)]))
    if e.body is not None:
        params.append(inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[e.body, Body()]))

    async def endpoint(**values: Any) -> Response:
        request: Request = values["request"]
        call = Call(admin, values["caller"], request.state.request_id,
                    {name: values[name] for name in ids}, body=values.get("body"), query=values.get("query"),
                    tenant=values["tenant"], params={name: values[name] for name in e.path_choices},
                    statement_timeout_ms=timeout,
                    headers={name: request.headers[name] for name in e.headers} if e.headers else request.headers)
        result = await run_in_threadpool(e.handler, call)
        if isinstance(result, Response):
            return result
        return JSONResponse(result.model_dump(mode="json"), status_code=e.status)

    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = e.handler.__name__
    endpoint.max_body = e.max_body  # type: ignore[attr-defined]
    endpoint.header_help = headers  # type: ignore[attr-defined]
    endpoint.body_model = e.body  # type: ignore[attr-defined]
    return endpoint
