"""`intake services`, `intake tenant create` and `intake inbox create`, run as a user runs them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.processes import intake_process, run_intake


def intake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_intake(*args, env=env)


def test_services_up_status_down_in_a_fresh_home(tmp_path: Path, stack: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "INTAKE_ADMIN_DATABASE_URL",
                                                              "INTAKE_SECRET_KEY")}
    env["INTAKE_HOME"] = str(tmp_path / "home")
    # Each command a process of its own, as a user runs them: each finds the servers by what the home holds.
    try:
        first = intake_process("services", "up", "--json", env=env)
        assert first.returncode == 0, first.stderr
        up = json.loads(first.stdout)
        assert up["postgres_running"] and up["redis_running"]
        assert up["database_url"].startswith("postgresql://intake_app@")
        # Redis asks for the home's password, which the URL scripts read carries (the table shows it masked).
        password = (tmp_path / "home" / "redis_password").read_text().strip()
        assert up["redis_url"].startswith(f"redis://:{password}@127.0.0.1:")
        assert stat.S_IMODE((tmp_path / "home" / "services.json").stat().st_mode) == 0o600
        table = intake_process("services", "status", env=env).stdout
        assert "redis://:***@127.0.0.1:" in table and password not in table

        again = json.loads(intake_process("services", "up", "--json", env=env).stdout)
        assert again == up  # reused, not restarted

        status = json.loads(intake_process("services", "status", "--json", env=env).stdout)
        assert status["database_url"] == up["database_url"] and status["redis_url"] == up["redis_url"]

        created = intake_process("tenant", "create", "Persisted", "--json", env=env)
        tenant_id = json.loads(created.stdout)["id"]
        down = json.loads(intake_process("services", "down", "--json", env=env).stdout)
        assert not down["postgres_running"] and not down["redis_running"]
        assert down["database_url"] is None and down["redis_url"] is None

        # A crashed Redis leaves its pid file behind: the next `up` must see through it.
        (tmp_path / "home" / "redis" / "redis.pid").write_text("999999")
        restarted = json.loads(intake_process("services", "up", "--json", env=env).stdout)
        assert restarted["postgres_running"] and restarted["redis_running"]
        # Data persists across runs: the tenant made before `down` is still there.
        inbox = intake_process("inbox", "create", "--tenant", tenant_id, "--channel", "telegram", "--json", env=env)
        assert inbox.returncode == 0, inbox.stderr
    finally:
        intake_process("services", "down", env=env)


def test_tenant_and_inbox_create_print_what_scripts_need(stack: dict[str, str]) -> None:
    tenant = intake("tenant", "create", "Acme Oy", "--json")
    assert tenant.returncode == 0, tenant.stderr
    tenant_id = json.loads(tenant.stdout)["id"]

    result = intake("inbox", "create", "--tenant", tenant_id, "--channel", "whatsapp",
                    "--secret", "app_secret=meta-app-secret", "--json")
    assert result.returncode == 0, result.stderr
    inbox = json.loads(result.stdout)
    assert inbox["tenant_id"] == tenant_id and inbox["channel"] == "whatsapp"
    assert inbox["webhook_url"].endswith(f"/v1/webhooks/whatsapp/{inbox['id']}")
    assert inbox["secrets"]["app_secret"] == "meta-app-secret"
    assert len(inbox["secrets"]["verify_token"]) >= 16  # generated, since we may choose it

    api = json.loads(intake("inbox", "create", "--tenant", tenant_id, "--channel", "api", "--json").stdout)
    assert api["secrets"]["signing_secret"].startswith("whsec_")


def test_inbox_secrets_are_encrypted_at_rest(stack: dict[str, str]) -> None:
    import psycopg

    tenant_id = json.loads(intake("tenant", "create", "Secretive", "--json").stdout)["id"]
    inbox = json.loads(intake("inbox", "create", "--tenant", tenant_id, "--channel", "twilio",
                              "--secret", "auth_token=twilio-token-12345", "--json").stdout)
    with psycopg.connect(stack["INTAKE_ADMIN_DATABASE_URL"]) as conn:
        stored = conn.execute("SELECT secrets FROM inboxes WHERE id = %s", (inbox["id"],)).fetchone()
    assert stored is not None and "twilio-token-12345" not in stored[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "fax"], "channel: Input should be 'twilio'"),  # refused as the API refuses it
        (["--channel", "twilio"], "needs --secret auth_token=VALUE"),
        (["--channel", "telegram", "--secret", "secret_token=has spaces"], "malformed"),
        (["--channel", "api", "--secret", "bogus=1"], "has no secret bogus"),
    ],
)
def test_inbox_create_explains_bad_requests(stack: dict[str, str], args: list[str], message: str) -> None:
    tenant_id = json.loads(intake("tenant", "create", "Errors", "--json").stdout)["id"]
    result = intake("inbox", "create", "--tenant", tenant_id, *args, "--json")
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_unknown_tenant_is_a_clear_error(stack: dict[str, str]) -> None:
    result = intake("inbox", "create", "--tenant", "00000000-0000-0000-0000-000000000000", "--channel", "api")
    assert result.returncode == 1 and "no tenant" in result.stderr


def test_unreachable_database_is_a_clear_error(stack: dict[str, str]) -> None:
    env = dict(os.environ, DATABASE_URL="postgresql://intake@127.0.0.1:1/intake",
               INTAKE_ADMIN_DATABASE_URL="postgresql://intake@127.0.0.1:1/intake")
    result = intake("tenant", "create", "Nowhere", env=env)
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_settings_are_named(stack: dict[str, str]) -> None:
    env = dict(os.environ, REDIS_URL="http://nope", INTAKE_EMBEDDING_DIM="zero")
    result = intake("services", "status", env=env)
    assert result.returncode == 1
    assert "REDIS_URL" in result.stderr and "INTAKE_EMBEDDING_DIM" in result.stderr
