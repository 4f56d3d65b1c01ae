"""Sending semantics: retries for what may pass later, refusals once, never two sends of one reply."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, text, update

from db.schema import inboxes
from db.tenancy import bind_tenant
from pipelines.outbound import ProviderUnavailable, SendInProgress
from tests.outbound_helpers import (
    box,
    customer_thread,
    feed,
    ledger_rows,
    message,
    queue_reply,
    send_now,
    settings_for,
)
from tests.processes import free_port
from tests.provider_server import provider_server


def test_503_releases_the_claim_and_the_next_attempt_sends(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread)
        stub.script.append(("answer", 503, {"code": 20503, "message": "Service unavailable", "status": 503}))
        with pytest.raises(ProviderUnavailable) as raised:
            send_now(app_engine, settings_for(base), thread, reply)
        assert raised.value.retry_after is None
        row = message(app_engine, thread, reply)
        assert (row.status, row.send_claimed_at) == ("queued", None)
        assert send_now(app_engine, settings_for(base), thread, reply).outcome == "sent"
    assert len(stub.requests) == 2
    assert message(app_engine, thread, reply).status == "sent"
    assert ledger_rows(app_engine, thread) == []


@pytest.mark.parametrize(("channel", "answer", "seconds"), [
    ("twilio", (429, {"code": 20429, "message": "Too Many Requests", "status": 429}, {"Retry-After": "7"}), 7.0),
    ("telegram", (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
                        "parameters": {"retry_after": 3}}, {}), 3.0),
    ("whatsapp", (400, {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException",
                                  "code": 130429, "fbtrace_id": "x"}}, {"Retry-After": "2"}), 2.0),
    ("sendgrid", (429, {"errors": [{"message": "too many requests"}]}, {}), None),
])
def test_429_retries_after_what_the_provider_said(app_engine: Engine, channel: str, answer: tuple[Any, ...],
                                                  seconds: float | None) -> None:
    with provider_server(channel) as (base, stub):
        thread = customer_thread(app_engine, channel)
        reply = queue_reply(app_engine, thread)
        stub.script.append(("answer", *answer))
        with pytest.raises(ProviderUnavailable) as raised:
            send_now(app_engine, settings_for(base), thread, reply)
        assert raised.value.retry_after == seconds
        assert message(app_engine, thread, reply).status == "queued"
        assert send_now(app_engine, settings_for(base), thread, reply).outcome == "sent"


def test_a_timeout_and_an_unreachable_provider_are_retried(app_engine: Engine) -> None:
    with provider_server("telegram") as (base, stub):
        thread = customer_thread(app_engine, "telegram")
        reply = queue_reply(app_engine, thread)
        stub.script.append(("sleep", 2.0))
        with pytest.raises(ProviderUnavailable, match="timed out"):
            send_now(app_engine, settings_for(base, outbound_timeout_seconds=0.5), thread, reply)
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        send_now(app_engine, settings_for(closed), thread, reply)
    assert message(app_engine, thread, reply).status == "queued"


def test_the_last_attempt_fails_the_reply_with_a_ledger_row(app_engine: Engine) -> None:
    with provider_server("postmark") as (base, stub):
        thread = customer_thread(app_engine, "postmark")
        reply = queue_reply(app_engine, thread)
        stub.script.append(("answer", 500, {"ErrorCode": 100, "Message": "Maintenance"}))
        result = send_now(app_engine, settings_for(base), thread, reply, final_attempt=True)
    assert result.outcome == "failed"
    row = message(app_engine, thread, reply)
    assert row.status == "failed" and row.status_error.startswith("unavailable: no answer after the last retry")
    assert len(ledger_rows(app_engine, thread)) == 1


def test_a_replay_after_the_cause_is_fixed_sends_the_failed_reply(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio", secrets={})  # can receive, cannot send yet
        reply = queue_reply(app_engine, thread)
        assert send_now(app_engine, settings_for(base), thread, reply).outcome == "failed"
        assert stub.requests == []
        row = message(app_engine, thread, reply)
        assert row.status_error.startswith("not_configured: the twilio inbox has no 'account_sid' secret")
        assert "twilio-auth-token" not in row.status_error
        # An ordinary duplicate job leaves it failed; the operator sets the secret and replays the ledger row.
        assert send_now(app_engine, settings_for(base), thread, reply).outcome == "skipped"
        with app_engine.begin() as conn:
            bind_tenant(conn, thread.tenant)
            conn.execute(update(inboxes).where(inboxes.c.id == thread.inbox.id).values(secrets=box().seal(
                {"auth_token": "twilio-auth-token", "account_sid": "AC" + "b2" * 16})))
        assert send_now(app_engine, settings_for(base), thread, reply, retry_failed=True).outcome == "sent"
    assert len(stub.requests) == 1
    assert message(app_engine, thread, reply).status == "sent"
    assert feed(app_engine, thread, reply) == ["failed", "sent"]


def test_two_jobs_for_one_reply_send_it_once(app_engine: Engine) -> None:
    with provider_server("whatsapp") as (base, stub):
        thread = customer_thread(app_engine, "whatsapp")
        reply = queue_reply(app_engine, thread)
        stub.script.append(("sleep", 1.0))  # the provider is slow: the second job arrives meanwhile
        outcomes: list[str] = []

        def job() -> None:
            try:
                outcomes.append(send_now(app_engine, settings_for(base), thread, reply).outcome)
            except SendInProgress:
                outcomes.append("in progress")

        jobs = [threading.Thread(target=job) for _ in range(2)]
        for j in jobs:
            j.start()
        for j in jobs:
            j.join(30)
        assert sorted(outcomes) == ["in progress", "sent"]
        # The job that found the claim comes back later and finds the reply sent.
        assert send_now(app_engine, settings_for(base), thread, reply).outcome == "skipped"
    assert len(stub.requests) == 1


def test_a_claim_whose_worker_died_is_taken_over_after_the_lease(app_engine: Engine) -> None:
    with provider_server("api") as (base, stub):
        thread = customer_thread(app_engine, "api", reply_url=f"{base}/replies")
        reply = queue_reply(app_engine, thread)
        with app_engine.begin() as conn:
            bind_tenant(conn, thread.tenant)
            conn.execute(text("UPDATE messages SET send_claimed_at = now() - interval '2 minutes' WHERE id = :m"),
                         {"m": reply})
        with pytest.raises(SendInProgress):
            send_now(app_engine, settings_for(base), thread, reply)
        assert stub.requests == []
        result = send_now(app_engine, settings_for(base, outbound_claim_seconds=60), thread, reply)
    assert result.outcome == "sent" and len(stub.requests) == 1
    # The same id on the retried attempt: a receiver deduping on webhook-id shows the reply once.
    assert stub.requests[0].headers["webhook-id"] == f"intake:{reply}"


def test_a_reply_url_on_a_private_network_is_refused_without_a_request(app_engine: Engine) -> None:
    with provider_server("api") as (base, stub):
        thread = customer_thread(app_engine, "api", reply_url=f"{base}/replies")
        reply = queue_reply(app_engine, thread)
        result = send_now(app_engine, settings_for(base, outbound_allow_private_networks=False), thread, reply)
    assert result.outcome == "failed" and stub.requests == []
    assert message(app_engine, thread, reply).status_error.startswith("private_network: reply_url resolves to 127.0.0.1")


@pytest.mark.parametrize(("answer", "code"), [
    ((302, b"", {"Location": "https://elsewhere.example/"}), "302"),
    ((201, b"<html>not json</html>", {}), "bad_answer"),
    ((201, b"{" + b'"x": "' + b"y" * 3_000_000 + b'"}', {}), "bad_answer"),  # read up to the limit, no further
    ((201, [1, 2, 3], {}), "bad_answer"),
    ((201, b"[" * 5000 + b"]" * 5000, {}), "bad_answer"),  # nested deeper than any JSON reader goes
    ((400, {"code": "\x00x", "message": "NUL \x00 in the text"}, {}), "\\x00x: NUL \\x00 in the text"),
    ((400, b'{"code": "\\ud800", "message": "a lone surrogate"}', {}), "400: HTTP 400"),
])
def test_odd_answers_are_refusals_not_crashes(app_engine: Engine, answer: tuple[Any, ...], code: str) -> None:
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread)
        stub.script.append(("answer", *answer))
        result = send_now(app_engine, settings_for(base), thread, reply)
    assert result.outcome == "failed"
    row = message(app_engine, thread, reply)
    assert row.status == "failed"
    assert row.status_error.startswith(code)


def test_a_secret_the_provider_echoes_is_not_stored(app_engine: Engine) -> None:
    with provider_server("telegram") as (base, stub):
        thread = customer_thread(app_engine, "telegram")
        reply = queue_reply(app_engine, thread)
        token = "123456789:AAE-test-bot-token_0123456789abcd"
        stub.script.append(("answer", 404, {"ok": False, "error_code": 404,
                                            "description": f"Not Found: /bot{token}/sendMessage"}))
        send_now(app_engine, settings_for(base), thread, reply)
    row = message(app_engine, thread, reply)
    assert row.status_error == "404: Not Found: /bot***/sendMessage"
    assert all(token not in r.exception_message for r in ledger_rows(app_engine, thread))


def test_a_reply_that_is_not_queued_is_left_alone(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread)
        with app_engine.begin() as conn:
            bind_tenant(conn, thread.tenant)
            conn.execute(text("UPDATE messages SET status = 'sent' WHERE id = :m"), {"m": reply})
            inbound = conn.execute(text("SELECT id FROM messages WHERE direction = 'inbound'")).scalar_one()
        assert send_now(app_engine, settings_for(base), thread, reply).outcome == "skipped"
        assert send_now(app_engine, settings_for(base), thread, inbound).outcome == "skipped"
    assert stub.requests == []
