"""Delivery statuses of replies: forward only, kept when they arrive before their message, each in the feed."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from tests.factories import deliver
from tests.outbound_helpers import Thread, customer_thread, early, feed, message, queue_reply, send_now, settings_for
from tests.provider_server import provider_server
from tests.webhooks import fixture

DELIVERED_SID = "SM5d0e8ae6ade43cb3c0ce4525424e4054"  # the sid in twilio/status_delivered.form


def twilio_status(engine: Engine, thread: Thread, sid: str, status: str, error: str | None = None) -> None:
    fields = {"MessageSid": sid, "MessageStatus": status, "To": "+14155550101", "From": "+15557654321",
              "AccountSid": "AC" + "a1" * 16, **({"ErrorCode": error, "ErrorMessage": "Unknown error"} if error else {})}
    deliver(engine, thread.inbox, urlencode(fields).encode(), "application/x-www-form-urlencoded")


def test_a_status_before_its_message_is_kept_and_applied_when_the_id_is_recorded(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread)
        seen: list[list[tuple[str, str]]] = []

        def answer(request: object) -> tuple[int, object, dict[str, str]]:
            # Twilio's callback overtakes its own answer, and so our commit of the sid it gives us.
            body, content_type = fixture("twilio/status_delivered.form")
            deliver(app_engine, thread.inbox, body, content_type)
            seen.append([tuple(r) for r in early(app_engine, thread)])
            assert message(app_engine, thread, reply).status == "queued"
            return 201, {"sid": DELIVERED_SID, "status": "queued"}, {}

        stub.default = answer
        result = send_now(app_engine, settings_for(base), thread, reply)
    assert seen == [[(DELIVERED_SID, "delivered")]]
    assert result.early_applied == 1
    assert message(app_engine, thread, reply).status == "delivered"
    assert early(app_engine, thread) == []
    assert feed(app_engine, thread, reply) == ["sent", "delivered"]


def test_a_status_of_a_message_that_is_not_ours_is_not_kept(app_engine: Engine) -> None:
    thread = customer_thread(app_engine, "whatsapp")
    queue_reply(app_engine, thread)  # queued, not in flight: no status can be about it yet
    body, content_type = fixture("whatsapp/statuses.json")  # messages the number sent from elsewhere
    deliver(app_engine, thread.inbox, body, content_type)
    assert early(app_engine, thread) == []


def test_statuses_never_go_backward(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, _stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread)
        send_now(app_engine, settings_for(base), thread, reply)
    sid = message(app_engine, thread, reply).external_id
    for status in ("read", "delivered", "sent", "queued", "failed"):
        twilio_status(app_engine, thread, sid, status, error="30008" if status == "failed" else None)
    row = message(app_engine, thread, reply)
    assert (row.status, row.status_error) == ("read", None)
    assert feed(app_engine, thread, reply) == ["sent", "read"]
    assert early(app_engine, thread) == []  # statuses of a known message are never kept for later


def test_undelivered_after_sent_fails_the_reply_with_twilios_code(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, _stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread)
        send_now(app_engine, settings_for(base), thread, reply)
    twilio_status(app_engine, thread, message(app_engine, thread, reply).external_id, "undelivered", "30003")
    row = message(app_engine, thread, reply)
    assert (row.status, row.status_error) == ("failed", "30003: Unknown error")
    assert feed(app_engine, thread, reply) == ["sent", "failed"]


def test_whatsapp_statuses_and_several_early_ones_apply_in_order(app_engine: Engine) -> None:
    wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    with provider_server("whatsapp") as (base, stub):
        thread = customer_thread(app_engine, "whatsapp")
        reply = queue_reply(app_engine, thread)

        def answer(request: object) -> tuple[int, object, dict[str, str]]:
            for status, at in (("read", 1750263790), ("delivered", 1750263773)):  # read overtook delivered
                payload = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
                    "field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {
                        "display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                        "statuses": [{"id": wamid, "status": status, "timestamp": str(at),
                                      "recipient_id": "16505551234"}]}}]}]}
                deliver(app_engine, thread.inbox, json.dumps(payload).encode(), "application/json")
            return 200, {"messaging_product": "whatsapp", "messages": [{"id": wamid}]}, {}

        stub.default = answer
        send_now(app_engine, settings_for(base), thread, reply)
    assert message(app_engine, thread, reply).status == "read"
    assert feed(app_engine, thread, reply) == ["sent", "delivered", "read"]


def test_the_api_channels_status_items_name_the_reply_by_its_own_id(app_engine: Engine) -> None:
    with provider_server("api") as (base, _stub):
        thread = customer_thread(app_engine, "api", reply_url=f"{base}/replies")
        reply = queue_reply(app_engine, thread)
        send_now(app_engine, settings_for(base), thread, reply)
    at = datetime.now(UTC).isoformat()
    body = json.dumps({"items": [{"type": "status", "message_id": f"intake:{reply}", "status": "delivered",
                                  "at": at}]}).encode()
    deliver(app_engine, thread.inbox, body, "application/json", headers={"webhook-id": f"msg_{uuid.uuid4().hex}"})
    assert message(app_engine, thread, reply).status == "delivered"
    with app_engine.begin() as conn:
        bind_tenant(conn, thread.tenant)
        data = conn.execute(text("SELECT data FROM change_events WHERE type = 'message.status_updated' "
                                 "ORDER BY seq DESC LIMIT 1")).scalar_one()
    assert data["message"]["id"] == str(reply) and data["message"]["status"] == "delivered"
    assert data["message"]["direction"] == "outbound" and data["status"]["status"] == "delivered"
    assert set(data["message"]) == {"id", "conversation_id", "contact_id", "inbox_id", "direction", "kind",
                                    "external_id", "subject", "content", "status", "sent_at", "received_at"}


def test_a_status_racing_the_commit_of_its_id_is_never_lost(app_engine: Engine) -> None:
    """The callback's transaction and the send's record transaction run at once, many times over."""
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio")
        replies = [queue_reply(app_engine, thread, f"reply {i}") for i in range(12)]
        callbacks: list[threading.Thread] = []

        def answer(request: object) -> tuple[int, object, dict[str, str]]:
            sid = "SM" + uuid.uuid4().hex
            # The callback is posted as the answer leaves: it races our commit of the sid.
            callback = threading.Thread(target=twilio_status, args=(app_engine, thread, sid, "delivered"))
            callbacks.append(callback)
            callback.start()
            return 201, {"sid": sid, "status": "queued"}, {}

        stub.default = answer
        for reply in replies:
            send_now(app_engine, settings_for(base), thread, reply)
        for callback in callbacks:
            callback.join(30)
    assert [message(app_engine, thread, r).status for r in replies] == ["delivered"] * len(replies)
    assert early(app_engine, thread) == []
