"""`intake webhook ...` as an operator runs it: the same refusals and audit rows as the admin API."""

from __future__ import annotations

import json
import os
from typing import Any

from sqlalchemy import Engine, text

from tests.processes import intake_ok, run_intake

PUBLIC = "https://93.184.216.34/hooks"


def public_only() -> dict[str, str]:
    """This run's environment without the tests' leave to deliver to private addresses: as in production."""
    return {k: v for k, v in os.environ.items() if k != "INTAKE_WEBHOOK_ALLOW_PRIVATE_NETWORKS"}


def ok(*args: str) -> Any:
    return intake_ok(*args, env=public_only())


def refused(*args: str) -> str:
    """Refused in one line (a usage error may take more)."""
    result = run_intake(*args, env=public_only())
    assert result.returncode in (1, 2), result.stdout
    assert result.stderr.strip().count("\n") == 0 or result.returncode == 2, result.stderr
    return result.stderr


def test_the_webhook_commands_create_change_rotate_recover_and_delete(stack: dict[str, str],
                                                                     admin_engine: Engine) -> None:
    tenant = str(ok("tenant", "create", "Webhooks Oy")["id"])
    created = ok("webhook", "create", "--tenant", tenant, PUBLIC, "--event-type", "message.received",
                 "--description", "CRM", "--rate-limit", "20")
    endpoint, secret = created["endpoint"]["id"], created["secret"]
    assert secret.startswith("whsec_") and created["endpoint"]["event_types"] == ["message.received"]
    assert [e["id"] for e in ok("webhook", "list", "--tenant", tenant)["items"]] == [endpoint]
    shown = ok("webhook", "show", endpoint)
    assert shown["rate_limit_per_second"] == 20 and secret not in json.dumps(shown)

    changed = ok("webhook", "update", endpoint, "--all-types", "--no-rate-limit", "--disable")
    assert (changed["event_types"], changed["rate_limit_per_second"], changed["enabled"]) == ([], None, False)
    assert ok("webhook", "update", endpoint, "--enable")["enabled"] is True
    rotated = ok("webhook", "rotate-secret", endpoint, "--overlap", "1h")
    assert rotated["secret"] != secret and rotated["endpoint"]["previous_secret_until"]
    assert ok("webhook", "recover", endpoint, "--since", "2h") == {"endpoint_id": endpoint, "events": 0}
    assert ok("webhook", "attempts", endpoint, "--status", "failed") == {"items": [], "next_offset": None}
    assert ok("webhook", "delete", endpoint)["deleted"] is True
    assert "no webhook" in refused("webhook", "show", endpoint)
    with admin_engine.begin() as conn:
        actions = conn.execute(text("SELECT action, actor FROM audit_logs WHERE subject_id = :s ORDER BY created_at"),
                               {"s": endpoint}).all()
    assert [a.action.removeprefix("webhook_endpoint.") for a in actions] == [
        "create", "update", "update", "rotate_secret", "recover", "delete"]
    assert all(a.actor.startswith("cli:") for a in actions)


def test_the_webhook_commands_refuse_bad_input_in_one_line_naming_the_field(stack: dict[str, str]) -> None:
    tenant = str(ok("tenant", "create", "Webhooks refused")["id"])
    assert "url" in refused("webhook", "create", "--tenant", tenant, "http://127.0.0.1/hook")
    assert "url" in refused("webhook", "create", "--tenant", tenant, "ftp://93.184.216.34/")
    assert "url" in refused("webhook", "create", "--tenant", tenant, "https://93.184.216.34/\u202e")
    assert "url" in refused("webhook", "create", "--tenant", tenant, "x" * 3000)
    assert "event_types" in refused("webhook", "create", "--tenant", tenant, PUBLIC, "--event-type", "nope.nope")
    assert "rate_limit_per_second" in refused("webhook", "create", "--tenant", tenant, PUBLIC, "--rate-limit", "0")
    assert "description" in refused("webhook", "create", "--tenant", tenant, PUBLIC, "--description", "x" * 1001)
    assert "--rate-limit" in refused("webhook", "create", "--tenant", tenant, PUBLIC, "--rate-limit", "many")
    endpoint = ok("webhook", "create", "--tenant", tenant, PUBLIC)["endpoint"]["id"]
    assert "--overlap" in refused("webhook", "rotate-secret", endpoint, "--overlap", "forever")
    assert "overlap_seconds" in refused("webhook", "rotate-secret", endpoint, "--overlap", "999d")
    assert "--since" in refused("webhook", "recover", endpoint, "--since", "the dawn of time")
    assert ok("webhook", "list", "--tenant", tenant)["items"][0]["url"] == PUBLIC
