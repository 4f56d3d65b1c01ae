"""A real `intake worker --queues outbound` sends queued replies: Retry-After honoured, refusals to the ledger."""

from __future__ import annotations

import json
import subprocess
import uuid

import dramatiq
import redis
from sqlalchemy import Engine

from config import get_settings
from tests.outbound_helpers import customer_thread, ledger_rows, message, queue_reply
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
