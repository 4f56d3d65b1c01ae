"""The admin process: the control plane's JSON API under /v1/admin/, never on the internet-facing ingress,
and the operator console at `/`, in one app.

`create_app` builds it: a FastAPI app whose routes are the API's (`workers.admin.api`, from the endpoints
declared in `tenants`, `operations`, `data`, `sla`, `conversations`, `webhooks`, `changes` and `ai`) beside the
console's Starlette routes; more routes mount by passing them in `routes`. `GET /v1/admin/openapi.json` is the
document FastAPI writes from those declarations' models. `GET /healthz` answers without a key. A path or
method that matches nothing is answered in the API's error shape (404 `not_found`, 405 `method_not_allowed`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from config import Settings
from pipelines.errors import error_body
from workers.admin import ai, changes, conversations, data, operations, sla, tenants, webhooks
from workers.admin.api import answer, failure, router
from workers.admin.console import console_routes
from workers.admin.http import Endpoint, request_id
from workers.admin.state import Admin

OPENAPI_PATH = "/v1/admin/openapi.json"


def all_endpoints() -> list[Endpoint]:
    return [*tenants.endpoints(), *operations.endpoints(), *data.endpoints(), *sla.endpoints(),
            *conversations.endpoints(), *webhooks.endpoints(), *changes.endpoints(), *ai.endpoints()]


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    found: set[str] = set()
    for route in routes:
        methods = getattr(route, "methods", None)
        if methods and route.matches(scope)[0] != Match.NONE:
            found.update(methods)
    if "GET" in found:
        found.add("HEAD")
    return found


def create_app(settings: Settings, *, database_url: str, admin_database_url: str, secret_key: str,
               routes: Sequence[BaseRoute] = ()) -> FastAPI:
    admin = Admin(settings, database_url=database_url, admin_database_url=admin_database_url,
                  secret_key=secret_key)

    api = router(admin, all_endpoints())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = {**(exc.headers or {}), "Cache-Control": "no-store"}
        if exc.status_code == 405:  # every method of the path, not only those of the first route that has it
            headers["Allow"] = ", ".join(sorted(allowed_methods([*api.routes, *app.router.routes], request.scope)))
        return answer(exc.status_code, error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)),
                      headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return failure(exc, request_id(request))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        admin.close()

    app = FastAPI(
        title="Intake admin API", version="1", openapi_url=OPENAPI_PATH, docs_url=None, redoc_url=None,
        description="Every list takes `limit` (1-500, default 50) and `offset`, and answers "
                    "`{\"items\": [...], \"next_offset\": n}` (null on the last page).",
        lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: server_error},
    )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app.include_router(api)
    app.router.routes.extend([*routes, *console_routes(admin)])
    app.state.admin = admin
    return app
