"""One action, one implementation: a tenant or an inbox created at the command line and through the admin
API is created by the same function, so its audit row has one shape whichever the door."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import Engine, text

from tests.processes import intake_ok, intake_refused


def audited(engine: Engine, action: str, subject: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT actor, after FROM audit_logs WHERE action = :a AND subject_id = :s"),
                           {"a": action, "s": subject}).one()
    return {"actor": row.actor, "after": row.after}


def comparable(after: dict[str, Any]) -> dict[str, Any]:
    """What two objects created alike share: everything but their ids, names and times."""
    return {k: v for k, v in after.items() if k not in ("id", "tenant_id", "name", "created_at", "webhook_url",
                                                        "secrets")}


def test_a_tenant_and_an_inbox_audit_alike_from_the_cli_and_the_api(op: httpx.Client, admin_engine: Engine) -> None:
    by_cli = intake_ok("tenant", "create", "Door Cli Oy")
    by_api = op.post("/v1/admin/tenants", json={"name": "Door Api Oy"})
    assert by_api.status_code == 201, by_api.text
    cli_row = audited(admin_engine, "tenant.create", by_cli["id"])
    api_row = audited(admin_engine, "tenant.create", by_api.json()["id"])
    assert set(cli_row["after"]) == set(api_row["after"]) and "settings" in cli_row["after"]
    assert comparable(cli_row["after"]) == comparable(api_row["after"])
    assert cli_row["after"]["name"] == by_cli["name"] == "Door Cli Oy" and cli_row["actor"].startswith("cli:")

    cli_inbox = intake_ok("inbox", "create", "--tenant", by_cli["id"], "--channel", "telegram", "--region", "FI")
    api_inbox = op.post(f"/v1/admin/tenants/{by_api.json()['id']}/inboxes",
                        json={"channel": "telegram", "settings": {"default_region": "FI"}})
    assert api_inbox.status_code == 201, api_inbox.text
    cli_row = audited(admin_engine, "inbox.create", cli_inbox["id"])
    api_row = audited(admin_engine, "inbox.create", api_inbox.json()["inbox"]["id"])
    assert set(cli_row["after"]) == set(api_row["after"])
    assert comparable(cli_row["after"]) == comparable(api_row["after"])
    assert cli_row["after"]["settings"] == {"default_region": "FI"}
    # The secret is printed once; the audit row never holds it, as the API's does not.
    assert cli_inbox["secrets"]["secret_token"] not in str(cli_row["after"])


def test_the_cli_refuses_what_the_api_refuses_in_one_line(stack: dict[str, str]) -> None:
    tenant = intake_ok("tenant", "create", "Door Refusals Oy")["id"]
    for args, field in (
        (("--channel", "carrier-pigeon"), "channel"),
        (("--channel", "telegram", "--secret", "no such secret=x"), "secrets"),
        (("--channel", "telegram", "--name", "x" * 10_000), "name"),
        (("--channel", "telegram", "--region", "\u202eSU"), "settings.default_region"),
    ):
        refused = intake_refused("inbox", "create", "--tenant", tenant, *args)
        assert field in refused and refused.strip().count("\n") == 0, refused
    assert "name" in intake_refused("tenant", "create", "\u200b" * 5000)
    assert "tenant" in intake_refused("inbox", "create", "--tenant", "not-a-tenant", "--channel", "telegram").lower()
