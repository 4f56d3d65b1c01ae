"""`intake conversation ...` run as a user runs it: the same functions as the API, the same refusals, the same
feed events and audit rows, one JSON object with --json and one line on stderr for a mistake."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from tests.factories import deliver, new_inbox
from tests.processes import intake_ok as ok
from tests.processes import intake_refused as refused


def test_a_conversation_at_the_command_line(app_engine: Engine, stack: dict[str, str]) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Cli desk")
    body = orjson.dumps({"id": "cli-1", "type": "message", "sent_at": datetime.now(UTC).isoformat(),
                         "text": "Where is my parcel?", "contact": {"email": "cli@example.com"}})
    deliver(app_engine, inbox, body, "application/json", headers={"webhook-id": "cli-1"})
    tenant = str(inbox.tenant_id)

    listed = ok("conversation", "list", "--tenant", tenant)
    assert len(listed["items"]) == 1 and listed["items"][0]["awaiting_reply"] is True
    conversation = listed["items"][0]["id"]

    sent = ok("conversation", "reply", conversation, "--text", "It left today.", "--no-send",
              "--idempotency-key", "cli-key")
    assert (sent["status"], sent["replayed"]) == ("sent", False) and sent["author"].startswith("cli:")
    again = ok("conversation", "reply", conversation, "--text", "It left today.", "--no-send",
               "--idempotency-key", "cli-key")
    assert (again["id"], again["replayed"]) == (sent["id"], True)
    assert "another request" in refused("conversation", "reply", conversation, "--text", "Other", "--no-send",
                                        "--idempotency-key", "cli-key")

    shown = ok("conversation", "show", conversation)
    assert shown["awaiting_reply"] is False and shown["first_response_at"] is not None
    assert [m["direction"] for m in shown["messages"]["items"]] == ["inbound", "outbound"]

    assert ok("conversation", "assign", conversation, "--assignee", "agent-3")["assignee"] == "agent-3"
    assert ok("conversation", "assign", conversation, "--assignee", "none")["assignee"] is None
    assert ok("conversation", "resolve", conversation)["status"] == "resolved"
    assert ok("conversation", "list", "--tenant", tenant, "--status", "open")["items"] == []
    assert ok("conversation", "reopen", conversation)["status"] == "open"

    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        types = [r.type for r in conn.execute(text("SELECT type FROM change_events ORDER BY seq"))]
        actions = [r.action for r in conn.execute(text(
            "SELECT action FROM audit_logs WHERE action LIKE 'conversation.%' ORDER BY created_at"))]
    # The ingest's events of the customer's message, then the command line's.
    assert types == ["contact.created", "conversation.opened", "message.received", "message.sent", "conversation.assigned", "conversation.assigned", "conversation.resolved",
                     "conversation.reopened"]
    assert actions == ["conversation.reply", "conversation.assign", "conversation.assign", "conversation.resolve",
                       "conversation.reopen"]


def test_mistakes_at_the_command_line_are_one_line(app_engine: Engine, stack: dict[str, str]) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Cli mistakes")
    missing = str(uuid.uuid4())
    assert "no conversation" in refused("conversation", "show", missing)
    assert "UUID" in refused("conversation", "resolve", "not-an-id")
    assert "--send" in refused("conversation", "reply", missing, "--text", "hi")
    assert "text" in refused("conversation", "reply", missing, "--text", "x" * 65_537, "--send")
    assert "text" in refused("conversation", "reply", missing, "--text", "   ", "--no-send")
    assert "idempotency" in refused("conversation", "reply", missing, "--text", "hi", "--send",
                                    "--idempotency-key", "é").lower()
    assert "assignee" in refused("conversation", "assign", missing, "--assignee", "a" * 201)
    assert "cursor" in refused("conversation", "list", "--tenant", str(inbox.tenant_id), "--cursor", "bm9wZQ")
    assert "status" in refused("conversation", "list", "--tenant", str(inbox.tenant_id), "--status", "closed")
