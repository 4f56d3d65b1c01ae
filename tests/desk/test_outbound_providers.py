"""Each provider's send API, against a local server that answers in the provider's documented shapes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from pipelines.channels.api import verify
from pipelines.channels.base import VerifyContext, WebhookRequest
from tests.outbound_helpers import (
    customer_thread,
    feed,
    ledger_rows,
    message,
    queue_reply,
    send_now,
    settings_for,
)
from tests.provider_server import provider_server

TEXT = "Thanks, it ships today — 発送済み ✓"


def basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


def test_twilio_posts_the_form_from_the_number_the_customer_wrote_to(app_engine: Engine) -> None:
    with provider_server("twilio") as (base, stub):
        thread = customer_thread(app_engine, "twilio")
        reply = queue_reply(app_engine, thread, TEXT)
        result = send_now(app_engine, settings_for(base), thread, reply)
    sid = "AC" + "a1" * 16
    [request] = stub.requests
    assert request.path == f"/2010-04-01/Accounts/{sid}/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert basic(request.headers["authorization"]) == (sid, "twilio-auth-token")
    form = request.form()
    assert (form["To"], form["From"], form["Body"]) == ("+14155550101", "+15557654321", TEXT)
    assert form["StatusCallback"].endswith(f"/v1/webhooks/twilio/{thread.inbox.id}")
    provider_id = stub.answers[0][1]["sid"]
    assert result.outcome == "sent" and result.provider_id == provider_id
    row = message(app_engine, thread, reply)
    assert (row.status, row.external_id, row.send_claimed_at) == ("sent", provider_id, None)
    assert row.metadata["intake_id"] == f"intake:{reply}"
    assert feed(app_engine, thread, reply) == ["sent"]


def test_whatsapp_sends_text_in_reply_to_the_customers_message(app_engine: Engine) -> None:
    with provider_server("whatsapp") as (base, stub):
        thread = customer_thread(app_engine, "whatsapp")
        reply = queue_reply(app_engine, thread, TEXT)
        send_now(app_engine, settings_for(base), thread, reply)
    [request] = stub.requests
    assert request.path == "/v21.0/106540352242922/messages"
    assert request.headers["authorization"] == "Bearer EAAG-test-access-token-0123456789"
    body = request.json()
    assert body["messaging_product"] == "whatsapp" and body["type"] == "text"
    assert body["to"] == "16505551234" and body["text"]["body"] == TEXT
    assert body["context"] == {"message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="}
    assert message(app_engine, thread, reply).external_id == stub.answers[0][1]["messages"][0]["id"]


def test_telegram_replies_in_the_chat_to_the_customers_message(app_engine: Engine) -> None:
    with provider_server("telegram") as (base, stub):
        thread = customer_thread(app_engine, "telegram")
        reply = queue_reply(app_engine, thread, TEXT)
        send_now(app_engine, settings_for(base), thread, reply)
    [request] = stub.requests
    assert request.path == "/bot123456789:AAE-test-bot-token_0123456789abcd/sendMessage"
    body = request.json()
    assert body["chat_id"] == 1111111 and body["text"] == TEXT
    assert body["reply_parameters"]["message_id"] == 1365
    answered = stub.answers[0][1]["result"]["message_id"]
    assert message(app_engine, thread, reply).external_id == f"1111111:{answered}"


def test_postmark_threads_the_email_under_the_customers_message(app_engine: Engine) -> None:
    with provider_server("postmark") as (base, stub):
        thread = customer_thread(app_engine, "postmark")
        reply = queue_reply(app_engine, thread, TEXT, html="<p>Thanks</p>")
        send_now(app_engine, settings_for(base), thread, reply)
    [request] = stub.requests
    assert request.path == "/email"
    assert request.headers["x-postmark-server-token"] == "pm-server-token-0123456789"
    body = request.json()
    assert (body["From"], body["To"], body["ReplyTo"]) == ("help@support.example.com", "support@postmarkapp.com",
                                                          "help@support.example.com")
    assert body["Subject"] == "Re: Test subject" and body["TextBody"] == TEXT and body["HtmlBody"] == "<p>Thanks</p>"
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    assert headers["In-Reply-To"] == "<CAKDvkCV7Mu=zJ5y@mail.gmail.com>"
    assert headers["References"] == ("<case-1000@help.example.com> <case-1001@help.example.com> "
                                     "<CAKDvkCV7Mu=zJ5y@mail.gmail.com>")
    assert message(app_engine, thread, reply).external_id == stub.answers[0][1]["MessageID"]


def test_mailgun_posts_the_form_to_the_sending_domain(app_engine: Engine) -> None:
    with provider_server("mailgun") as (base, stub):
        thread = customer_thread(app_engine, "mailgun")
        reply = queue_reply(app_engine, thread, TEXT)
        send_now(app_engine, settings_for(base), thread, reply)
    [request] = stub.requests
    assert request.path == "/v3/mg.example.com/messages"
    assert basic(request.headers["authorization"]) == ("api", "key-mailgun-sending-0123456789")
    form = request.form()
    assert (form["from"], form["to"], form["text"]) == ("support@help.example.com", "bob@customer.example", TEXT)
    assert form["subject"] == "Re: Your refund"
    assert form["h:In-Reply-To"] == "<CAF=abc123@mail.customer.example>"
    assert form["h:References"].endswith("<CAF=abc123@mail.customer.example>")
    assert form["h:Reply-To"] == "support@help.example.com"
    assert message(app_engine, thread, reply).external_id == stub.answers[0][1]["id"]


def test_sendgrid_sends_json_and_takes_the_id_from_the_header(app_engine: Engine) -> None:
    with provider_server("sendgrid") as (base, stub):
        thread = customer_thread(app_engine, "sendgrid")
        reply = queue_reply(app_engine, thread, TEXT, subject="About your order")
        send_now(app_engine, settings_for(base), thread, reply)
    [request] = stub.requests
    assert request.path == "/v3/mail/send"
    assert request.headers["authorization"] == "Bearer SG.sendgrid-test-key-0123456789"
    body = request.json()
    assert body["personalizations"][0]["to"][0]["email"]
    assert body["from"] == body["reply_to"] == {"email": "help@support.example.com"}
    assert body["subject"] == "About your order"
    assert body["content"] == [{"type": "text/plain", "value": TEXT}]
    assert body["headers"]["In-Reply-To"] == "<CAHXy7p2S+4M@mail.example.com>"
    assert body["headers"]["References"] == "<ticket-77@help.example.com> <CAHXy7p2S+4M@mail.example.com>"
    assert message(app_engine, thread, reply).external_id == stub.answers[0][2]["X-Message-Id"]


def test_api_channel_posts_a_signed_reply_to_the_reply_url(app_engine: Engine) -> None:
    with provider_server("api") as (base, stub):
        thread = customer_thread(app_engine, "api", reply_url=f"{base}/crm/replies")
        reply = queue_reply(app_engine, thread, TEXT)
        send_now(app_engine, settings_for(base), thread, reply)
    [request] = stub.requests
    assert request.path == "/crm/replies"
    assert request.headers["webhook-id"] == f"intake:{reply}"
    # The receiver verifies it as it would verify our own deliveries, with the inbox's signing secret.
    verify(WebhookRequest(method="POST", url=base, headers=request.headers, body=request.body),
           thread.inbox.secrets, VerifyContext(now=datetime.now(UTC), tolerance_seconds=300))
    body = request.json()
    assert body["id"] == f"intake:{reply}" and body["text"] == TEXT and body["in_reply_to"] == "chat_01HZX3"
    assert body["contact"]["external_id"] == "crm-4471"
    row = message(app_engine, thread, reply)
    assert (row.status, row.external_id) == ("sent", f"intake:{reply}")


# The documented refusal of each provider, and the code and text it must leave on the message.
REFUSALS: list[tuple[str, int, Any, str]] = [
    ("twilio", 400, {"code": 21211, "message": "The 'To' number +1415555 is not a valid phone number.",
                     "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400},
     "21211: The 'To' number +1415555 is not a valid phone number."),
    ("whatsapp", 400, {"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException",
                                 "code": 131047, "error_data": {"messaging_product": "whatsapp", "details":
                                 "Message failed to send because more than 24 hours have passed since the "
                                 "customer last replied to this number."}, "fbtrace_id": "Az8or2yhqkZfEZ"}},
     "131047: (#131047) Re-engagement message (Message failed to send because more than 24 hours have passed "
     "since the customer last replied to this number.)"),
    ("telegram", 403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
     "403: Forbidden: bot was blocked by the user"),
    ("postmark", 422, {"ErrorCode": 406, "Message": "You tried to send to recipient(s) that have been marked as "
                                                   "inactive."},
     "406: You tried to send to recipient(s) that have been marked as inactive."),
    ("mailgun", 400, {"message": "to parameter is not a valid address. please check documentation"},
     "400: to parameter is not a valid address. please check documentation"),
    ("sendgrid", 400, {"errors": [{"message": "The from address does not match a verified Sender Identity.",
                                   "field": "from", "help": None}]},
     "400: The from address does not match a verified Sender Identity. (field from)"),
    ("api", 410, {"error": "gone", "detail": "the conversation was closed"}, "410: the conversation was closed"),
]


@pytest.mark.parametrize(("channel", "status", "body", "error"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refusal_fails_the_reply_once_with_the_providers_code_and_a_ledger_row(
        app_engine: Engine, channel: str, status: int, body: Any, error: str) -> None:
    with provider_server(channel) as (base, stub):
        thread = customer_thread(app_engine, channel, reply_url=f"{base}/replies")
        reply = queue_reply(app_engine, thread)
        stub.script.append(("answer", status, body))
        result = send_now(app_engine, settings_for(base), thread, reply)
        again = send_now(app_engine, settings_for(base), thread, reply)  # a duplicate job
    assert (result.outcome, again.outcome) == ("failed", "skipped")
    assert len(stub.requests) == 1
    row = message(app_engine, thread, reply)
    assert (row.status, row.status_error) == ("failed", error)
    [ledger] = ledger_rows(app_engine, thread)
    assert (ledger.queue, ledger.status) == ("outbound", "dead")
    assert error in ledger.exception_message
    assert ledger.message["kwargs"] == {"retry_failed": True}
    assert ledger.message["args"] == [str(thread.tenant), str(reply)]
    assert feed(app_engine, thread, reply) == ["failed"]
