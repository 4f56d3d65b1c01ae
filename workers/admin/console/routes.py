"""The console's routes, mounted at `/` of the admin process next to the API under /v1/admin/."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from workers.admin.console import audit, auth, conversations, events, failures, jobs, overview, tenants
from workers.admin.console.web import Console
from workers.admin.state import Admin

STATIC = Path(__file__).parent / "static"


def console_routes(admin: Admin) -> list[BaseRoute]:
    console = Console(admin)
    return [
        *auth.routes(console),
        *overview.routes(console),
        *jobs.routes(console),
        *failures.routes(console),
        *events.routes(console),
        *tenants.routes(console),
        *conversations.routes(console),
        *audit.routes(console),
        Mount("/static", StaticFiles(directory=STATIC), name="console-static"),
    ]
