"""The ingress's inbox cache with the listener (`intake serve`): entries live an hour here, so only PostgreSQL's
notifications can end them, and every change that must stop deliveries does so within moments: a rotation
without overlap, a disabled inbox or tenant, a deleted tenant's inboxes, and a change made while the
listener's session was lost."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.admin.test_admin_rotation import A, deliver
from tests.admin_server import admin_server, client, make_key
from tests.processes import INTAKE, wait_for, web_server

SOON = 10.0  # seconds: a notification takes milliseconds; the cache's own lifetime here is an hour


@pytest.fixture(scope="module")
def ingress(stack: dict[str, str]) -> Iterator[str]:
    with web_server({"INTAKE_INBOX_CACHE_SECONDS": "3600", "INTAKE_INBOX_CACHE_LISTEN_SECONDS": "7200",
                     "INTAKE_RATE_LIMIT_PER_SECOND": "10000", "INTAKE_RATE_LIMIT_BURST": "10000",
                     "INTAKE_CLIENT_ERROR_BURST": "10000"}) as base:
        yield base


@pytest.fixture(scope="module")
def op(stack: dict[str, str], admin_engine: Engine) -> Iterator[httpx.Client]:
    with admin_server(stack) as base, client(base, make_key(admin_engine)) as c:
        yield c


def new_api_inbox(op: httpx.Client, ingress: str) -> tuple[str, str, dict[str, str]]:
    """(tenant, inbox, secrets) of a new `api` inbox that the ingress has looked up and cached."""
    tenant = op.post(f"{A}/tenants", json={"name": "Cached"}).json()["id"]
    created = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api"}).json()
    inbox, secrets = created["inbox"]["id"], created["secrets"]
    assert deliver(ingress, "api", inbox, secrets) == 200
    return tenant, inbox, secrets


def soon(answer: object, status: int) -> None:
    """Until `answer()` gives `status`, for at most SOON seconds."""
    wait_for(lambda: answer() == status, timeout=SOON, interval=0.05)  # type: ignore[operator]


def test_a_rotation_without_overlap_ends_the_cached_secret(ingress: str, op: httpx.Client) -> None:
    _, inbox, old = new_api_inbox(op, ingress)
    assert deliver(ingress, "api", inbox, old) == 200  # from the cache
    new = op.post(f"{A}/inboxes/{inbox}/rotate-secrets", json={"overlap_seconds": 0}).json()["secrets"]
    soon(lambda: deliver(ingress, "api", inbox, old), 401)
    assert deliver(ingress, "api", inbox, new) == 200


def test_a_disabled_inbox_or_tenant_stops_answering_at_once(ingress: str, op: httpx.Client) -> None:
    _, inbox, secrets = new_api_inbox(op, ingress)
    assert op.post(f"{A}/inboxes/{inbox}/disable").json()["enabled"] is False
    soon(lambda: deliver(ingress, "api", inbox, secrets), 404)
    assert op.post(f"{A}/inboxes/{inbox}/enable").json()["enabled"] is True
    soon(lambda: deliver(ingress, "api", inbox, secrets), 200)

    tenant, inbox, secrets = new_api_inbox(op, ingress)
    assert op.post(f"{A}/tenants/{tenant}/disable").json()["disabled"] is True
    soon(lambda: deliver(ingress, "api", inbox, secrets), 404)


def test_a_deleted_tenant_s_inboxes_are_unknown_at_once(ingress: str, op: httpx.Client) -> None:
    tenant, inbox, secrets = new_api_inbox(op, ingress)
    subprocess.run([INTAKE, "tenant", "delete", tenant, "--confirm", tenant], check=True, capture_output=True,
                   timeout=120)
    soon(lambda: deliver(ingress, "api", inbox, secrets), 404)


def test_a_change_while_the_listener_is_lost_still_takes_effect(ingress: str, op: httpx.Client,
                                                                admin_engine: Engine) -> None:
    _, inbox, secrets = new_api_inbox(op, ingress)
    # Every web process's listener (any other web process listening reconnects as this one does).
    listener = text("SELECT pid FROM pg_stat_activity WHERE application_name = 'intake-web-listen'")
    with admin_engine.begin() as conn:
        lost = set(conn.execute(listener).scalars())
        assert lost
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:p AS int[])) AS pid"), {"p": list(lost)})
    # The change is made while no session listens; the ingress's next session starts from an empty cache.
    assert op.post(f"{A}/inboxes/{inbox}/disable").json()["enabled"] is False
    soon(lambda: deliver(ingress, "api", inbox, secrets), 404)

    def listening_again() -> bool:
        with admin_engine.begin() as conn:
            return bool(set(conn.execute(listener).scalars()) - lost)

    wait_for(listening_again, timeout=SOON, interval=0.1)
    started = time.monotonic()
    _, inbox, secrets = new_api_inbox(op, ingress)  # and notifications end entries again
    assert op.post(f"{A}/inboxes/{inbox}/disable").json()["enabled"] is False
    soon(lambda: deliver(ingress, "api", inbox, secrets), 404)
    assert time.monotonic() - started < SOON
