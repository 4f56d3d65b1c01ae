"""Inboxes that can send, a customer who wrote to each, and replies queued as the conversation API queues them."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
from sqlalchemy import Engine, text

from config import Settings, get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox
from pipelines.outbound import SendResult, send
from pipelines.outbound import http as outbound_http
from tests.factories import deliver, new_inbox
from tests.webhooks import fixture

# Per channel: the sending secrets and settings, and the customer's message the reply answers.
SENDING: dict[str, tuple[dict[str, str], dict[str, Any], str]] = {
    "twilio": ({"account_sid": "AC" + "a1" * 16}, {}, "twilio/sms_inbound.form"),
    "whatsapp": ({"access_token": "EAAG-test-access-token-0123456789"}, {"phone_number_id": "106540352242922"},
                 "whatsapp/text.json"),
    "telegram": ({"bot_token": "123456789:AAE-test-bot-token_0123456789abcd"}, {}, "telegram/message.json"),
    "postmark": ({"server_token": "pm-server-token-0123456789"}, {"from_address": "help@support.example.com"},
                 "postmark/inbound.json"),
    "mailgun": ({"api_key": "key-mailgun-sending-0123456789"},
                {"domain": "mg.example.com", "from_address": "support@help.example.com"}, "mailgun/inbound.form"),
    "sendgrid": ({"api_key": "SG.sendgrid-test-key-0123456789"}, {"from_address": "help@support.example.com"},
                 "sendgrid/inbound.multipart"),
    "api": ({}, {}, "api/message.json"),
}


@dataclass
class Thread:
    inbox: CreatedInbox
    conversation_id: uuid.UUID
    contact_id: uuid.UUID

    @property
    def tenant(self) -> TenantId:
        return self.inbox.tenant_id


def box() -> SecretBox:
    return SecretBox(os.environ["INTAKE_SECRET_KEY"])


def settings_for(base: str, **overrides: Any) -> Settings:
    """The fleet's settings with every provider's API at `base` (the local provider server)."""
    update: dict[str, Any] = {f"{p}_api_base": base for p in ("twilio", "meta", "telegram", "postmark", "mailgun",
                                                              "sendgrid")}
    update.update({"outbound_allow_private_networks": True, "outbound_timeout_seconds": 5.0})
    update.update(overrides)
    return get_settings().model_copy(update=update)


def customer_thread(engine: Engine, channel: str, *, reply_url: str | None = None,
                    secrets: dict[str, str] | None = None) -> Thread:
    """A new tenant whose `channel` inbox can send, and a conversation opened by the customer's fixture message."""
    given, settings, name = SENDING[channel]
    settings = {**settings, **({"reply_url": reply_url} if reply_url else {})}
    inbox = new_inbox(engine, channel, secrets=given if secrets is None else secrets,
                      settings=settings)
    body, content_type = fixture(name)
    deliver(engine, inbox, body, content_type, headers={"webhook-id": f"msg_{uuid.uuid4().hex}"})
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        row = conn.execute(text("SELECT conversation_id, contact_id FROM messages WHERE inbox_id = :i "
                                "AND direction = 'inbound'"), {"i": inbox.id}).one()
    return Thread(inbox, row.conversation_id, row.contact_id)


def queue_reply(engine: Engine, thread: Thread, content: str = "Thanks, it ships today.",
                *, subject: str | None = None, html: str | None = None) -> uuid.UUID:
    """An outbound row as the conversation API stores a reply with `send: true`."""
    message_id = uuid.uuid4()
    kind = "email" if thread.inbox.channel in ("postmark", "mailgun", "sendgrid") else "text"
    with engine.begin() as conn:
        bind_tenant(conn, thread.tenant)
        conn.execute(text("""
            INSERT INTO messages (id, tenant_id, inbox_id, conversation_id, contact_id, direction, kind, external_id,
                                  subject, content, content_html, status, sent_at)
            VALUES (:id, :t, :i, :c, :p, 'outbound', :kind, 'intake:' || CAST(:id AS text), :subject, :content,
                    :html, 'queued', now())"""),
            {"id": message_id, "t": thread.tenant, "i": thread.inbox.id, "c": thread.conversation_id,
             "p": thread.contact_id, "kind": kind, "subject": subject, "content": content, "html": html})
    return message_id


def send_now(engine: Engine, settings: Settings, thread: Thread, message_id: uuid.UUID, *,
             retry_failed: bool = False, final_attempt: bool = False) -> SendResult:
    """What the `send_message` actor does, with its ledger row written as the actor writes it."""
    from workers.middleware.ledger import record_in

    replay = dramatiq.Message(queue_name="outbound", actor_name="send_message",
                              args=(str(thread.tenant), str(message_id)), kwargs={"retry_failed": True}, options={},
                              message_id=str(uuid.uuid5(message_id, "send_message")))
    with outbound_http.client(settings) as client:
        return send(engine, settings, box(), thread.tenant, message_id, client,
                    ledger=lambda conn, exc: record_in(conn, replay, exc, thread.tenant),
                    retry_failed=retry_failed, final_attempt=final_attempt)


def message(engine: Engine, thread: Thread, message_id: uuid.UUID) -> Any:
    with engine.begin() as conn:
        bind_tenant(conn, thread.tenant)
        return conn.execute(text("SELECT status, status_error, external_id, send_claimed_at, metadata "
                                 "FROM messages WHERE id = :id"), {"id": message_id}).one()


def ledger_rows(engine: Engine, thread: Thread) -> list[Any]:
    with engine.begin() as conn:
        bind_tenant(conn, thread.tenant)
        return list(conn.execute(text("SELECT actor, queue, status, exception_message, message, ref_id "
                                      "FROM job_failures WHERE actor = 'send_message'")))


def feed(engine: Engine, thread: Thread, message_id: uuid.UUID) -> list[str]:
    """The statuses the change feed reported for the message, in order."""
    with engine.begin() as conn:
        bind_tenant(conn, thread.tenant)
        return [r.status for r in conn.execute(text(
            "SELECT data->'message'->>'status' AS status FROM change_events "
            "WHERE type = 'message.status_updated' AND subject_id = :m ORDER BY seq"), {"m": message_id})]


def early(engine: Engine, thread: Thread) -> list[Any]:
    with engine.begin() as conn:
        bind_tenant(conn, thread.tenant)
        return list(conn.execute(text("SELECT external_id, status FROM early_statuses ORDER BY status")))
