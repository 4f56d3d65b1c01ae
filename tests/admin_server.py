"""The admin API served for tests: an in-process uvicorn server on a free port, real HTTP, real PostgreSQL,
and keys made the way `intake key create` makes them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from sqlalchemy import Engine
from starlette.applications import Starlette

from config import Settings, get_settings
from pipelines import audit
from pipelines.control import keys
from pipelines.control.models import TenantCreate
from pipelines.control.tenants import create as create_tenant
from tests.processes import free_port
from workers.admin.app import create_app


@contextmanager
def admin_server(stack: dict[str, str], **changes: object) -> Iterator[str]:
    """The admin API on a free port; `changes` replace settings (admin_rate_limit_burst=3)."""
    with admin_app(stack, get_settings().model_copy(update=changes)) as (base, _):
        yield base


@contextmanager
def admin_app(stack: dict[str, str], settings: Settings | None = None) -> Iterator[tuple[str, Starlette]]:
    """The server's base URL and its app (whose `state.admin` is the process's shared state)."""
    app = create_app(settings or get_settings(), database_url=stack["DATABASE_URL"],
                     admin_database_url=stack["INTAKE_ADMIN_DATABASE_URL"], secret_key=stack["INTAKE_SECRET_KEY"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the admin server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(20)


@dataclass
class Keyed:
    """A key's text and, for a tenant key, its tenant."""

    key: str
    key_id: uuid.UUID
    tenant_id: uuid.UUID | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_key(engine: Engine, *, tenant_id: uuid.UUID | None = None, name: str = "test") -> Keyed:
    with engine.begin() as conn:
        view, key = keys.create(conn, name=name, tenant_id=tenant_id, actor=audit.Actor("tests"))
    return Keyed(key, view.id, tenant_id)


def make_tenant(engine: Engine, name: str = "Admin test tenant") -> uuid.UUID:
    with engine.begin() as conn:
        return create_tenant(conn, TenantCreate(name=name), audit.Actor("tests")).id


def client(base: str, who: Keyed | None = None) -> httpx.Client:
    return httpx.Client(base_url=base, headers=who.headers if who else {}, timeout=30)
