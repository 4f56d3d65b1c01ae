"""A real `intake worker --queues outbound` sends queued replies: Retry-After honoured, refusals to the ledger, and
replies posted to the conversation API sent once, then moved on by the provider's status callback."""

from __future__ import annotations

import json
import subprocess
import uuid
from urllib.parse import urlencode

import dramatiq
import redis
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import bind_tenant
from tests.admin_server import client, make_key
from tests.factories import deliver
from tests.outbound_helpers import customer_thread, feed, ledger_rows, message, queue_reply
from tests.processes import INTAKE, wait_for, worker
from tests.provider_server import provider_server
from workers.broker import build_broker


def enqueue(tenant: uuid.UUID, message_id: uuid.UUID) -> None:
    """What the conversation API does after its commit: one `send_message` job on the `outbound` queue."""
    broker = build_broker(get_settings())
    try:
        broker.enqueue(dramatiq.Message(queue_name="outbound", actor_name="send_message",
                                        args=(str(tenant), str(message_id)), kwargs={}, options={}))
    finally:
        broker.close()


def test_a_worker_sends_waits_out_429_fails_a_refusal_once_and_sends_it_on_replay(
        stack: dict[str, str], app_engine: Engine, redis_client: redis.Redis) -> None:
    with provider_server("twilio") as (twilio_base, twilio), provider_server("telegram") as (telegram_base, telegram):
        env = {"INTAKE_TWILIO_API_BASE": twilio_base, "INTAKE_TELEGRAM_API_BASE": telegram_base,
               "INTAKE_OUTBOUND_ALLOW_PRIVATE_NETWORKS": "true", "INTAKE_JOB_MIN_BACKOFF_MS": "100"}
        sms = customer_thread(app_engine, "twilio")
        chat = customer_thread(app_engine, "telegram")
        throttled, blocked = queue_reply(app_engine, sms), queue_reply(app_engine, chat)
        twilio.script.append(("answer", 429, {"code": 20429, "message": "Too Many Requests", "status": 429},
                              {"Retry-After": "2"}))
        telegram.script.append(("answer", 403, {"ok": False, "error_code": 403,
                                                "description": "Forbidden: bot was blocked by the user"}))
        with worker(processes=1, threads=2, queues=("outbound",), env=env):
            enqueue(sms.tenant, throttled)
            enqueue(chat.tenant, blocked)
            enqueue(chat.tenant, blocked)  # a duplicate job: the refusal is recorded once
            wait_for(lambda: message(app_engine, sms, throttled).status == "sent", timeout=60)
            wait_for(lambda: message(app_engine, chat, blocked).status == "failed", timeout=60)
            # Every job done, the duplicate included: nothing waiting, delayed or unacknowledged.
            wait_for(lambda: sum(redis_client.hlen(f"dramatiq:{q}.msgs") for q in ("outbound", "outbound.DQ")) == 0,
                     timeout=30)
            refused = len(telegram.requests)
            # The customer unblocks the bot; the operator replays the ledger row and the reply goes out.
            replay = subprocess.run([INTAKE, "dlq", "replay", "--tenant", str(chat.tenant), "--json"],
                                    capture_output=True, text=True, timeout=60, check=True)
            assert json.loads(replay.stdout)["replayed"] == 1
            wait_for(lambda: message(app_engine, chat, blocked).status == "sent", timeout=60)
    assert len(twilio.requests) == 2
    # The provider said two seconds; dramatiq's own backoff would have come back after 0.1-0.2 s.
    assert twilio.requests[1].at - twilio.requests[0].at >= 1.9
    assert message(app_engine, sms, throttled).external_id == twilio.answers[1][1]["sid"]
    assert refused == 1 and len(telegram.requests) == 2
    assert telegram.answers[0][0] == 403
    row = message(app_engine, chat, blocked)
    assert row.status_error is None and row.external_id == f"1111111:{telegram.answers[1][1]['result']['message_id']}"
    [ledger] = ledger_rows(app_engine, chat)
    assert ledger.queue == "outbound" and ledger.message["kwargs"] == {"retry_failed": True}
    assert ledger.status == "replayed"


def test_a_reply_and_an_accepted_draft_posted_to_the_api_reach_the_provider_once(
        stack: dict[str, str], base: str, admin_engine: Engine, app_engine: Engine) -> None:
    """The whole way: the API's 201, its job on the `outbound` queue, a real worker, Twilio's Messages API taking
    each reply once (a request repeated under its Idempotency-Key sends nothing more), then Twilio's status
    callback moving the reply on to `delivered`."""
    with provider_server("twilio") as (twilio_base, twilio):
        sms = customer_thread(app_engine, "twilio")
        with app_engine.begin() as conn:
            bind_tenant(conn, sms.tenant)
            draft = conn.execute(text(
                "INSERT INTO ai_drafts (tenant_id, message_id, conversation_id, prompt_version, content, confidence, "
                "provider, model) SELECT tenant_id, id, conversation_id, 'v1', 'Your parcel ships today.', 0.9, "
                "'local', 'm' FROM messages WHERE direction = 'inbound' RETURNING id")).scalar_one()
        path = f"/v1/admin/conversations/{sms.conversation_id}/messages"
        with client(base, make_key(admin_engine, tenant_id=sms.tenant, name="agent")) as tk:
            posted = tk.post(path, json={"text": "We are on it.", "send": True}, headers={"Idempotency-Key": "r-1"})
            assert posted.status_code == 201 and posted.json()["status"] == "queued", posted.text
            accepted = tk.post(f"/v1/admin/drafts/{draft}/accept", json={})  # `send` defaults to true
            assert accepted.status_code == 201 and accepted.json()["message"]["status"] == "queued", accepted.text
            reply, from_draft = uuid.UUID(posted.json()["id"]), uuid.UUID(accepted.json()["message"]["id"])
            env = {"INTAKE_TWILIO_API_BASE": twilio_base, "INTAKE_OUTBOUND_ALLOW_PRIVATE_NETWORKS": "true"}
            with worker(processes=1, threads=2, queues=("outbound",), env=env):
                wait_for(lambda: {message(app_engine, sms, m).status for m in (reply, from_draft)} == {"sent"},
                         timeout=120)
                # Asked again, after the send: the same answers, and no job and no request more.
                again = tk.post(path, json={"text": "We are on it.", "send": True}, headers={"Idempotency-Key": "r-1"})
                assert again.status_code == 200 and again.json()["id"] == str(reply)
                assert tk.post(f"/v1/admin/drafts/{draft}/accept", json={}).status_code == 200
                wait_for(lambda: redis.Redis.from_url(stack["REDIS_URL"]).hlen("dramatiq:outbound.msgs") == 0,
                         timeout=60)
    assert sorted(r.form()["Body"] for r in twilio.requests) == ["We are on it.", "Your parcel ships today."]
    sid = message(app_engine, sms, reply).external_id
    assert sid.startswith("SM") and sid in {a[1]["sid"] for a in twilio.answers}
    fields = {"MessageSid": sid, "MessageStatus": "delivered", "To": "+14155550101", "From": "+15557654321",
              "AccountSid": "AC" + "a1" * 16}
    deliver(app_engine, sms.inbox, urlencode(fields).encode(), "application/x-www-form-urlencoded")
    assert message(app_engine, sms, reply).status == "delivered"
    assert feed(app_engine, sms, reply) == ["sent", "delivered"]
