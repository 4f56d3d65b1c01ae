"""The admin process: the control plane's JSON API under /v1/admin/, never on the internet-facing ingress.

`create_app` builds the Starlette app; more routes (a console at `/`) mount by passing them in `routes`.
The API's endpoints are declared in `tenants`, `operations`, `data`, `sla`, `conversations`, `webhooks`,
`changes` and `ai`; `GET /v1/admin/openapi.json` is the document generated from those declarations. `GET /healthz`
answers without a key.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config import Settings
from workers.admin import ai, changes, conversations, data, operations, sla, tenants, webhooks
from workers.admin.console import console_routes
from workers.admin.http import Endpoint, error, failure, handle
from workers.admin.openapi import document
from workers.admin.state import Admin

OPENAPI_PATH = "/v1/admin/openapi.json"


def all_endpoints() -> list[Endpoint]:
    return [*tenants.endpoints(), *operations.endpoints(), *data.endpoints(), *sla.endpoints(),
            *conversations.endpoints(), *webhooks.endpoints(), *changes.endpoints(), *ai.endpoints()]


def route_path(path: str, words: Collection[str]) -> str:
    """Ids match only as UUIDs (/failures/discard is never a failure's id: GET on it is a 405); a parameter
    that is one of a few words (an SLA priority) matches any segment, and its handler checks the word."""
    return re.sub(r"{(\w+)}", lambda m: f"{{{m[1]}}}" if m[1] in words else f"{{{m[1]}:uuid}}", path)


def grouped(admin: Admin, declared: list[Endpoint]) -> list[Route]:
    """One route per path, dispatching on the method, so that a 405 lists every method the path has; fixed
    paths first, so that /failures/replay is never taken for /failures/{failure_id}. Starlette lets HEAD
    through wherever GET is: it runs GET's handler (the server sends no body)."""
    by_path: dict[str, dict[str, Any]] = {}
    words: dict[str, set[str]] = {}
    for e in sorted(declared, key=lambda e: e.path.count("{")):
        by_path.setdefault(e.path, {})[e.method] = handle(admin, e)
        words.setdefault(e.path, set()).update(e.path_choices)
    routes = []
    for path, handlers in by_path.items():
        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            response: Response = await handlers[method](request)
            return response

        routes.append(Route(route_path(path, words[path]), dispatch, methods=list(handlers)))
    return routes


def create_app(settings: Settings, *, database_url: str, admin_database_url: str, secret_key: str,
               routes: Sequence[BaseRoute] = ()) -> Starlette:
    admin = Admin(settings, database_url=database_url, admin_database_url=admin_database_url,
                  secret_key=secret_key)
    declared = all_endpoints()
    spec = document(declared)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                     dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return failure(exc, request.headers.get("x-request-id", "-"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        admin.close()

    handlers: dict[Any, Any] = {HTTPException: http_error, Exception: server_error}
    app = Starlette(
        routes=[
            Route(OPENAPI_PATH, openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            *grouped(admin, declared),
            *routes,
            *console_routes(admin),
        ],
        lifespan=lifespan,
        exception_handlers=handlers,
    )
    app.state.admin = admin
    return app
