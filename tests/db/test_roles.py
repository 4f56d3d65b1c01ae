"""Roles that fit the job: each process refuses a database role that is wrong for it, and nothing prints a
password or the admin connection.

The fleet (`serve`, `worker`) runs as a plain role under row-level security; the clock and the cross-tenant
operator commands need `intake_maintenance`, without which row-level security would show them nothing and
they would report "0 stuck" while stored events wait forever.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from tests.factories import new_inbox
from tests.processes import INTAKE, free_port, run_intake, wait_for, web_server, worker

MAINTAINER = "e_roles_maintainer"  # a login role in intake_maintenance, as an operator would create
OWNER = "e_roles_owner"  # a plain login role that will own a table for one test
PLAIN = "e_roles_plain"  # another application's plain role


def role_url(stack: dict[str, str], role: str, password: str | None = None) -> str:
    """The fleet's URL with another role (the embedded server trusts its socket, passwords are unchecked)."""
    user = f"{role}:{password}" if password else role
    return stack["DATABASE_URL"].replace("intake_app@", f"{user}@", 1)


@pytest.fixture(scope="module")
def roles(stack: dict[str, str]) -> None:
    with psycopg.connect(stack["INTAKE_ADMIN_DATABASE_URL"], autocommit=True) as conn:
        for role in (MAINTAINER, OWNER, PLAIN):
            conn.execute(f"""DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                    CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS;
                END IF; END $$""")
        conn.execute(f"GRANT intake_maintenance TO {MAINTAINER}")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {PLAIN}")
        conn.execute(f"GRANT SELECT ON inboxes TO {PLAIN}")


def intake(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`intake ARGS` as a process: for the fleet's processes, whose refusal is part of how they start."""
    return subprocess.run([INTAKE, *args], capture_output=True, text=True, env=env, timeout=120)


def command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """An operator's command, run in this process with `env` as its environment (`tests.processes.run_intake`)."""
    return run_intake(*args, env=env)


def fleet_only_env(stack: dict[str, str], **extra: str) -> dict[str, str]:
    """The documented Procfile set-up before this change: DATABASE_URL only, the fleet's role."""
    env = {k: v for k, v in os.environ.items() if k != "INTAKE_ADMIN_DATABASE_URL"}
    return {**env, "DATABASE_URL": stack["DATABASE_URL"], **extra}


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- the clock and the cross-tenant commands ------------------------------------------------------
CROSS_TENANT = [
    ["clock", "--once"],
    ["clock"],
    ["dlq", "list"],
    ["dlq", "show", "5e76ede3-e2ca-4edd-998f-32145271c52d"],  # any id: the command is refused before it looks
    ["dlq", "replay", "--all", "--dry-run"],
    ["dlq", "discard", "8d1cba7c-d8fd-415a-8cd9-de8edd29caaa"],
    ["dlq", "stats"],
    ["events", "list"],
    ["events", "reprocess", "--status", "failed"],
]


@pytest.mark.parametrize("args", CROSS_TENANT, ids=" ".join)
def test_cross_tenant_commands_refuse_the_fleet_role(stack: dict[str, str], args: list[str]) -> None:
    result = command(args, fleet_only_env(stack))
    assert_one_line_refusal(result, f"intake {args[0]}", "intake_maintenance", "'intake_app'",
                            "INTAKE_ADMIN_DATABASE_URL")
    assert "postgresql://" not in result.stderr


def test_run_refuses_to_start_a_clock_that_would_be_blind(stack: dict[str, str], tmp_path: Path) -> None:
    result = intake(["run", "--port", str(free_port())], fleet_only_env(stack, INTAKE_HOME=str(tmp_path)))
    assert_one_line_refusal(result, "INTAKE_ADMIN_DATABASE_URL")


def telegram_update(update_id: int, text_: str) -> dict[str, object]:
    return {"update_id": update_id, "message": {"message_id": update_id, "date": 1700000000,
                                                "chat": {"id": 4242, "type": "private"},
                                                "from": {"id": 4242, "first_name": "Eve"}, "text": text_}}


def test_clock_rescues_an_event_redis_lost_only_with_maintenance_rights(
    stack: dict[str, str], roles: None, app_engine: Engine, redis_client: redis.Redis
) -> None:
    inbox = new_inbox(app_engine, "telegram", tenant_name="Lost in Redis")
    with web_server() as base:  # no worker: the job waits in Redis
        response = httpx.post(f"{base}/v1/webhooks/telegram/{inbox.id}", json=telegram_update(1, "Still there?"),
                              headers={"X-Telegram-Bot-Api-Secret-Token": inbox.secrets["secret_token"]})
    assert response.status_code == 200
    redis_client.flushall()  # Redis restarted empty: the job is gone, the stored event is not

    def event_status() -> str:
        with app_engine.begin() as conn:
            bind_tenant(conn, inbox.tenant_id)
            return str(conn.execute(text("SELECT status FROM inbound_events")).scalar_one())

    assert event_status() == "received"
    refused = command(["clock", "--once", "--json"], fleet_only_env(stack, INTAKE_SWEEP_GRACE_SECONDS="0"))
    assert_one_line_refusal(refused, "intake_maintenance")
    assert redis_client.dbsize() == 0  # nothing was sent, and nothing claimed "0 stuck"

    maintainer = fleet_only_env(stack, INTAKE_SWEEP_GRACE_SECONDS="0",
                                INTAKE_ADMIN_DATABASE_URL=role_url(stack, MAINTAINER))
    swept = command(["clock", "--once", "--json"], maintainer)
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["enqueued"] >= 1
    with worker(processes=1, threads=2):
        wait_for(lambda: event_status() == "processed", timeout=60)
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        assert conn.execute(text("SELECT content FROM messages")).scalars().all() == ["Still there?"]


def test_cross_tenant_commands_run_with_a_maintenance_role(stack: dict[str, str], roles: None) -> None:
    env = fleet_only_env(stack, INTAKE_ADMIN_DATABASE_URL=role_url(stack, MAINTAINER))
    for args in (["dlq", "stats", "--json"], ["events", "list", "--limit", "1", "--json"]):
        result = command(args, env)
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout), dict)


# -- the fleet's processes --------------------------------------------------------------------------
@pytest.fixture
def table_owned_by_a_plain_role(stack: dict[str, str], roles: None) -> Iterator[None]:
    """The shape of a managed database: the tables belong to a login role that is not a superuser."""
    with psycopg.connect(stack["INTAKE_ADMIN_DATABASE_URL"], autocommit=True) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'inbound_events'").fetchone()
        assert owner is not None
        conn.execute(f"ALTER TABLE inbound_events OWNER TO {OWNER}")
        try:
            yield
        finally:
            conn.execute(f'ALTER TABLE inbound_events OWNER TO "{owner[0]}"')


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker", "--processes", "1"]], ids=lambda c: c[0])
def test_fleet_processes_refuse_a_superuser(stack: dict[str, str], command: list[str]) -> None:
    result = intake(command, {**os.environ, "DATABASE_URL": stack["INTAKE_ADMIN_DATABASE_URL"]})
    assert_one_line_refusal(result, "bypasses row-level security")


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker", "--processes", "1"]], ids=lambda c: c[0])
def test_fleet_processes_refuse_a_maintenance_member(stack: dict[str, str], roles: None, command: list[str]) -> None:
    result = intake(command, {**os.environ, "DATABASE_URL": role_url(stack, MAINTAINER)})
    assert_one_line_refusal(result, repr(MAINTAINER), "intake_maintenance")


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker", "--processes", "1"]], ids=lambda c: c[0])
def test_fleet_processes_refuse_the_tables_owner(
    stack: dict[str, str], table_owned_by_a_plain_role: None, command: list[str]
) -> None:
    result = intake(command, {**os.environ, "DATABASE_URL": role_url(stack, OWNER)})
    assert_one_line_refusal(result, repr(OWNER), "owns the tables")


# -- the ingress's routing policy --------------------------------------------------------------------
def test_inbox_routing_serves_only_the_fleet_role(stack: dict[str, str], roles: None, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "telegram", tenant_name="Routed")
    with psycopg.connect(role_url(stack, PLAIN)) as conn:
        conn.execute("SELECT set_config('app.inbox_id', %s, true)", (str(inbox.id),))
        assert conn.execute("SELECT count(*) FROM inboxes").fetchone() == (0,)
    with psycopg.connect(stack["DATABASE_URL"]) as conn:  # the same question from the fleet is answered
        conn.execute("SELECT set_config('app.inbox_id', %s, true)", (str(inbox.id),))
        assert conn.execute("SELECT id FROM inboxes").fetchall() == [(inbox.id,)]


# -- nothing secret printed, secret files private ----------------------------------------------------
def test_run_prints_no_password_and_no_admin_url(tmp_path: Path, stack: dict[str, str]) -> None:
    app_password, admin_password = "app-pw-" + uuid.uuid4().hex, "admin-pw-" + uuid.uuid4().hex
    admin_url = stack["INTAKE_ADMIN_DATABASE_URL"].replace("postgres@", f"postgres:{admin_password}@", 1)
    env = {**os.environ, "INTAKE_HOME": str(tmp_path / "home"), "INTAKE_WORKER_METRICS_PORT": "0",
           "INTAKE_CLOCK_METRICS_PORT": "0", "DATABASE_URL": role_url(stack, "intake_app", app_password),
           "INTAKE_ADMIN_DATABASE_URL": admin_url}
    port = free_port()
    errors = (tmp_path / "stderr").open("wb")  # the children log there too: a file never fills up
    proc = subprocess.Popen([INTAKE, "run", "--port", str(port), "--threads", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=errors, start_new_session=True)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None

        wait_for(ready, timeout=90, interval=0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        errors.close()
    printed = out.decode() + (tmp_path / "stderr").read_text()
    assert "Intake is running" in printed
    for secret in (app_password, admin_password, os.environ["INTAKE_SECRET_KEY"]):
        assert secret not in printed
    assert "postgres@" not in printed and "postgres:" not in printed  # the admin connection is never shown
    assert "intake_app:***@" in printed  # the fleet's URL, masked


def test_services_status_shows_the_fleet_url_and_not_the_admin_one(stack: dict[str, str]) -> None:
    result = command(["services", "status", "--json"], dict(os.environ))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["database_url"] == stack["DATABASE_URL"] and status["redis_url"] == stack["REDIS_URL"]
    assert "admin_database_url" not in status and "postgres@" not in result.stdout
    assert "postgres@" not in command(["services", "status"], dict(os.environ)).stdout


AUDIT = r"""
import json, os, stat, sys
from pathlib import Path

watched = {}  # path -> modes seen while it existed, from its creation on

def hook(event, args):
    if event == "open" and args[2] & (os.O_WRONLY | os.O_RDWR) and Path(str(args[0])).parent == HOME:
        watched.setdefault(str(args[0]), [])
    if event == "os.chmod" and str(args[0]) in watched:
        chmods.append(str(args[0]))
    for path, modes in watched.items():
        try:
            modes.append(stat.S_IMODE(os.stat(path).st_mode))
        except OSError:
            pass

HOME = Path(sys.argv[1]).resolve()
chmods = []
os.umask(0)  # a careless umask must not matter: the files' modes come from the code
sys.addaudithook(hook)

from db.engine import make_engine
from pipelines.crypto import SecretBox
from pipelines.demo import ensure_demo
from workers.embedded.services import EmbeddedServices

key = EmbeddedServices(HOME).secret_key()
engine = make_engine(os.environ["DATABASE_URL"], prepared_statements=True, pool_size=1)
with engine.begin() as conn:
    ensure_demo(conn, SecretBox(key), HOME / "demo.json")
os.stat(HOME)  # one more audited look at every file
print(json.dumps({"watched": watched, "chmods": chmods}))
"""


def test_files_with_secrets_are_private_from_the_first_byte(tmp_path: Path, stack: dict[str, str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([sys.executable, "-c", AUDIT, str(home)], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["chmods"] == []  # created private, never narrowed afterwards
    for name in ("secret_key", "demo.json"):
        path = home / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip()
    modes = [mode for observed in seen["watched"].values() for mode in observed]
    assert modes, "no file was watched while it was written"
    assert all(mode & 0o077 == 0 for mode in modes), seen


def test_settings_never_show_a_password_or_key_in_their_repr() -> None:
    from config import Settings

    settings = Settings.model_validate({
        "DATABASE_URL": "postgresql://intake_app:pw-app@db/intake", "REDIS_URL": "redis://:pw-redis@r:6379/0",
        "admin_database_url": "postgresql://owner:pw-owner@db/intake", "secret_key": "k-secret",
        "ai_api_key": "sk-secret"})
    shown = repr(settings) + str(settings)
    assert not any(secret in shown for secret in ("pw-app", "pw-redis", "pw-owner", "k-secret", "sk-secret"))
    assert "ai_model='gpt-4o-mini'" in shown  # the rest is still there to read
