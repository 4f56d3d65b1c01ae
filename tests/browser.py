"""The console under test: the admin app on a real port, API keys, and a real headless Chromium.

The browser is Debian's `chromium` driven by Playwright, launched with `executable_path`, so no browser is
ever downloaded. Playwright rather than Selenium: it waits on conditions by itself (`expect(...)` retries
until a timeout), which keeps the tests free of sleeps, and it needs no driver binary matched to the
browser's version (Selenium would need Debian's `chromium-driver` as well).

When no Chromium is installed the browser tests are skipped with the reason; under CI=true they fail
instead, so a CI machine that lost its browser cannot pass silently. `make test` installs it when it can.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine
from starlette.applications import Starlette

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.control import keys
from tests.processes import free_port, wait_for

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    given = os.environ.get("INTAKE_TEST_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    """The browser's path, or skip (fail under CI=true) with a one-line reason."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the browser tests need the playwright package (pip install -e '.[dev]')"
    else:
        path = chromium_path()
        if path is not None:
            return path
        reason = "no Chromium found (apt-get install chromium, or set INTAKE_TEST_CHROMIUM)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def admin_app(stack: dict[str, str]) -> Starlette:
    from workers.admin.app import create_app

    return create_app(get_settings(), database_url=stack["DATABASE_URL"],
                      admin_database_url=stack["INTAKE_ADMIN_DATABASE_URL"], secret_key=stack["INTAKE_SECRET_KEY"])


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """The app on a free port of 127.0.0.1 (uvicorn in a thread), as the admin process serves it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, interval=0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def make_key(admin_engine: Engine, tenant: uuid.UUID | None = None, name: str = "console-test") -> str:
    """A new API key: an operator's, or a tenant's when `tenant` is given."""
    with admin_engine.begin() as conn:
        if tenant is not None:
            bind_tenant(conn, TenantId(tenant))
        _, key = keys.create(conn, name=name, tenant_id=tenant, actor=audit.Actor("tests"))
    return key


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
