"""The control plane's commands run as a user runs them, and `intake admin` as a real process."""

from __future__ import annotations

import json
import os
import subprocess

import httpx

from tests.processes import INTAKE, free_port, run_intake, stop, wait_until_serving


def intake(*args: str) -> subprocess.CompletedProcess[str]:
    return run_intake(*args)


def ok(*args: str) -> dict[str, object]:
    result = intake(*args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_the_lifecycle_at_the_command_line(stack: dict[str, str]) -> None:
    tenant = str(ok("tenant", "create", "Cli Oy")["id"])
    updated = ok("tenant", "update", tenant, "--set", "default_language=fi", "--set", "ai.monthly_budget_usd=25")
    assert updated["settings"] == {"default_language": "fi", "ai": {"monthly_budget_usd": 25.0}}
    refused = intake("tenant", "update", tenant, "--set", "ai.monthly_budget_usd=-5")
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0 and "settings.ai.monthly_budget_usd" in refused.stderr

    inbox = str(ok("inbox", "create", "--tenant", tenant, "--channel", "telegram")["id"])
    shown = ok("inbox", "show", inbox)
    assert str(shown["secrets"]["secret_token"]).startswith("****")  # type: ignore[index]
    rotated = ok("inbox", "rotate-secrets", inbox, "--overlap", "1h")
    assert rotated["inbox"]["previous_secrets_until"]  # type: ignore[index]
    assert ok("inbox", "disable", inbox)["enabled"] is False
    assert [i["id"] for i in ok("inbox", "list", "--tenant", tenant)["items"]] == [inbox]  # type: ignore[attr-defined]
    assert ok("tenant", "disable", tenant)["disabled"] is True

    team = ok("team", "create", "--tenant", tenant, "Billing", "--keyword", "invoice")
    assert intake("team", "create", "--tenant", tenant, "Billing").returncode == 1  # a duplicate: one line
    persona = ok("persona", "create", "--tenant", tenant, "Aino", "--language", "fi", "--default")
    assert persona["is_default"] is True
    assert [(p["name"], p["is_default"]) for p in ok("persona", "list", "--tenant", tenant)["items"]] == [  # type: ignore[index]
        ("Aino", True)]
    assert ok("team", "delete", str(team["id"]))["deleted"] is True

    key = ok("key", "create", "--name", "crm", "--tenant", tenant)
    assert str(key["key"]).startswith("ik_") and key["scope"] == "tenant"
    assert str(key["key"]) not in json.dumps(ok("key", "list", "--tenant", tenant))
    assert ok("key", "revoke", str(key["id"]))["revoked_at"]
    assert intake("key", "create", "--name", "x").returncode == 2  # neither --operator nor --tenant

    audit = ok("audit", "list", "--tenant", tenant, "--limit", "100")["items"]
    actions = {row["action"] for row in audit}  # type: ignore[attr-defined]
    assert {"tenant.create", "tenant.update", "tenant.disable", "inbox.create", "inbox.rotate_secrets",
            "inbox.disable", "team.create", "team.delete", "persona.create", "key.create", "key.revoke"} <= actions
    assert all(str(row["actor"]).startswith("cli:") for row in audit)  # type: ignore[attr-defined]
    assert str(rotated["secrets"]["secret_token"]) not in json.dumps(audit)  # type: ignore[index]


def test_intake_admin_serves_the_api(stack: dict[str, str]) -> None:
    secret = str(ok("key", "create", "--name", "admin process", "--operator")["key"])
    port = free_port()
    proc = subprocess.Popen([INTAKE, "admin", "--port", str(port)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc)
        assert httpx.get(f"{base}/v1/admin/tenants").status_code == 401
        listed = httpx.get(f"{base}/v1/admin/tenants", headers={"Authorization": f"Bearer {secret}"})
        assert listed.status_code == 200 and "items" in listed.json()
        assert httpx.get(f"{base}/v1/admin/openapi.json").json()["openapi"] == "3.1.0"
    finally:
        stop(proc)


def test_hostile_names_durations_and_paths_are_one_clear_line(stack: dict[str, str]) -> None:
    """Names that look like console markup print as written; absurd durations and unwritable paths are one
    line on stderr, never a traceback."""
    created = intake("tenant", "create", "[/oops] Oy")
    assert created.returncode == 0 and "[/oops] Oy" in created.stdout, created.stderr
    tenant = str(ok("tenant", "create", "Markup Oy")["id"])
    team = intake("team", "create", "--tenant", tenant, "a[/]b")
    assert team.returncode == 0 and "a[/]b" in team.stdout, team.stderr
    listed = intake("team", "list", "--tenant", tenant)
    assert listed.returncode == 0 and "a[/]b" in listed.stdout, listed.stderr
    inbox = str(ok("inbox", "create", "--tenant", tenant, "--channel", "telegram")["id"])
    for args in (("inbox", "rotate-secrets", inbox, "--overlap", "9" * 30 + "d"),
                 ("audit", "list", "--since", "999999d"),
                 ("audit", "list", "--since", "9" * 30 + "w"),
                 ("tenant", "export", tenant, "--out", "/proc/intake-export.zip")):
        refused = intake(*args)
        assert refused.returncode in (1, 2), refused.stderr
        assert "Traceback" not in refused.stderr and refused.stderr.strip(), refused.stderr

    region = intake("inbox", "create", "--tenant", tenant, "--channel", "api", "--region", "x" * 300)
    assert region.returncode == 1 and "settings.default_region" in region.stderr, region.stderr


def test_names_that_are_not_text_are_refused_in_one_line(stack: dict[str, str]) -> None:
    """Bytes that are not UTF-8 arrive in argv as lone surrogates, which PostgreSQL cannot store."""
    for args in ([b"tenant", b"create", b"\xff\xfe Oy"],
                 [b"inbox", b"create", b"--tenant", b"x", b"--channel", b"api", b"--secret", b"signing_secret=\xff"]):
        result = subprocess.run([INTAKE.encode(), *args], capture_output=True, env=dict(os.environ), timeout=120)
        assert result.returncode in (1, 2) and b"Traceback" not in result.stderr, result.stderr
        assert b"nicode" in result.stderr, result.stderr
