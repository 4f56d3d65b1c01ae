"""Test set-up: the real embedded PostgreSQL (+pgvector) and Redis, migrated once per run.

Every test works in tenants of its own, so tests never need to clean up after each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import Engine

from config import get_settings
from db import migrate
from db.engine import make_engine
from tests.admin_server import Keyed, admin_server, client, make_key
from tests.processes import web_server
from workers.embedded.services import EmbeddedServices

ROOT = Path(__file__).resolve().parent.parent
# Under pytest-xdist each worker process runs its own embedded services, in a home of its own.
TEST_HOME = Path(os.environ.get("INTAKE_TEST_HOME", ROOT / ".intake-test")) / os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """Start the embedded services, recreate the database, migrate it, and export the URLs."""
    services = EmbeddedServices(TEST_HOME)
    status = services.up()
    assert status.admin_database_url and status.database_url and status.redis_url
    server_url = status.admin_database_url.replace("/intake?", "/postgres?")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS intake WITH (FORCE)")
        conn.execute("CREATE DATABASE intake")
    migrate.upgrade(status.admin_database_url, embedding_dim=get_settings().embedding_dim)
    redis.Redis.from_url(status.redis_url).flushall()
    env = {
        "INTAKE_HOME": str(TEST_HOME),
        "DATABASE_URL": status.database_url,
        "INTAKE_ADMIN_DATABASE_URL": status.admin_database_url,
        "REDIS_URL": status.redis_url,
        "INTAKE_SECRET_KEY": services.secret_key(),
        "INTAKE_LOG_FORMAT": "json",
        "INTAKE_LOG_LEVEL": "warning",
    }
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    if os.environ.get("INTAKE_TEST_KEEP_SERVICES") != "1":
        services.down()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for a test whose processes put Unix sockets under it: a socket's
    path holds at most 107 bytes, and pytest's `tmp_path` under xdist (`.../popen-gw0/test_long_name0/`) leaves
    too few of them for an embedded PostgreSQL's socket a few directories further down."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="ib"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_engine(stack: dict[str, str]) -> Iterator[Engine]:
    engine = make_engine(stack["INTAKE_ADMIN_DATABASE_URL"], prepared_statements=True,
                         application_name="intake-tests-admin")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def app_engine(stack: dict[str, str]) -> Iterator[Engine]:
    engine = make_engine(stack["DATABASE_URL"], prepared_statements=True, application_name="intake-tests")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_client(stack: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(stack["REDIS_URL"])


# The ingress over real HTTP: one `intake serve` per test module that asks for one, with rate limits out of the
# way (the tests that are about rate limits start their own).
@pytest.fixture(scope="module")
def server(stack: dict[str, str]) -> Iterator[str]:
    with web_server({"INTAKE_RATE_LIMIT_PER_SECOND": "100000", "INTAKE_RATE_LIMIT_BURST": "100000"}) as base:
        yield base


# The admin API over real HTTP: one server per test module that asks for one, and an operator's client.
@pytest.fixture(scope="module")
def base(stack: dict[str, str]) -> Iterator[str]:
    with admin_server(stack) as url:
        yield url


@pytest.fixture(scope="module")
def operator(admin_engine: Engine) -> Keyed:
    return make_key(admin_engine, name="operator in tests")


@pytest.fixture
def op(base: str, operator: Keyed) -> Iterator[httpx.Client]:
    with client(base, operator) as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `offline` every test that needs no services, neither the suite's embedded ones (`stack`) nor its own
    (a module marked `services`): `make test-offline` runs just those (the channel adapters, normalization, the
    error policy, the layout) in a few minutes."""
    for item in items:
        if "stack" not in getattr(item, "fixturenames", ()) and item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.offline)
