"""A short message's language from its context: channel hints, the conversation, the contact, the tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines.ai.language import Earlier, Evidence, decide, normalise_hint
from pipelines.assistant import assist_messages
from pipelines.channels import api, telegram
from pipelines.channels.base import PayloadError, WebhookRequest
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox

START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


class Chat:
    """One contact writing in one conversation of an inbox, messages stored as the ingest pipeline stores them."""

    def __init__(self, engine: Engine, inbox: CreatedInbox, name: str) -> None:
        self.engine, self.tenant, self.inbox = engine, inbox.tenant_id, inbox.id
        self.sent = 0
        with engine.begin() as conn:
            bind_tenant(conn, self.tenant)
            self.contact = conn.execute(text("INSERT INTO contacts (tenant_id, display_name) VALUES (:t, :n) "
                                             "RETURNING id"), {"t": self.tenant, "n": name}).scalar_one()
        self.conversation = self.new_conversation()

    def new_conversation(self) -> uuid.UUID:
        with self.engine.begin() as conn:
            bind_tenant(conn, self.tenant)
            conn.execute(text("UPDATE conversations SET status = 'resolved' WHERE contact_id = :c"), {"c": self.contact})
            return uuid.UUID(str(conn.execute(text(
                "INSERT INTO conversations (tenant_id, inbox_id, contact_id) VALUES (:t, :i, :c) RETURNING id"),
                {"t": self.tenant, "i": self.inbox, "c": self.contact}).scalar_one()))

    def says(self, content: str, metadata: dict[str, Any] | None = None, subject: str | None = None) -> uuid.UUID:
        self.sent += 1
        at = START + timedelta(minutes=self.sent)
        with self.engine.begin() as conn:
            bind_tenant(conn, self.tenant)
            message = conn.execute(text("""
                INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, direction, external_id,
                                      subject, content, metadata, sent_at)
                VALUES (:t, :i, :c, :ct, 'inbound', :x, :s, :content, CAST(:m AS jsonb), :at) RETURNING id"""),
                {"t": self.tenant, "i": self.inbox, "c": self.conversation, "ct": self.contact, "x": uuid.uuid4().hex,
                 "s": subject, "content": content, "m": orjson.dumps(metadata or {}).decode(), "at": at}).scalar_one()
            conn.execute(text("UPDATE conversations SET last_inbound_at = :at WHERE id = :c"),
                         {"at": at, "c": self.conversation})
        return uuid.UUID(str(message))

    def assisted(self, message: uuid.UUID) -> tuple[str, str, str, str]:
        """(classified language, reasoning, draft language, draft text) once the message is assisted."""
        assist_messages(self.engine, get_settings(), self.tenant, [message])
        with self.engine.begin() as conn:
            bind_tenant(conn, self.tenant)
            row = conn.execute(text("""
                SELECT a.language, a.reasoning, d.language AS draft_language, d.content FROM ai_classifications a
                LEFT JOIN ai_drafts d ON d.message_id = a.message_id WHERE a.message_id = :m"""), {"m": message}).one()
        return row.language, row.reasoning, row.draft_language, row.content


def set_default_language(engine: Engine, tenant: TenantId, language: str) -> None:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE tenants SET settings = settings || jsonb_build_object('default_language', "
                          "CAST(:l AS text)) WHERE id = :t"), {"l": language, "t": tenant})


# Greetings of each language, as the local drafter opens its replies.
GREETINGS = {"en": "Hi Ada,", "fi": "Hei Ada,", "de": "Hallo Ada,", "sv": "Hej Ada,", "es": "Hola Ada:",
             "fr": "Bonjour Ada,"}


@pytest.mark.parametrize(("message", "hint", "language"), [
    ("Hello again", "en", "en"), ("Kiitos!", "fi", "fi"), ("ok thanks", "en-GB", "en"), ("Danke", "de", "de"),
    ("Hej", "sv-SE", "sv"), ("ok", "fr", "fr"),
])
def test_short_telegram_lines_follow_the_senders_language_code(stack: dict[str, str], app_engine: Engine,
                                                               message: str, hint: str, language: str) -> None:
    chat = Chat(app_engine, new_inbox(app_engine, "telegram"), "Ada Lovelace")
    classified, reasoning, drafted, draft = chat.assisted(chat.says(message, {"language_hint": hint}))
    assert (classified, drafted) == (language, language)
    assert draft.startswith(GREETINGS[language])
    assert decide(message).source != "text"  # too short for the text alone: the sender's app language decided
    assert f"the Telegram language_code '{hint}'; the text alone was unsure" in reasoning


def test_the_readme_case_hello_again_from_an_english_telegram_user(stack: dict[str, str], app_engine: Engine) -> None:
    chat = Chat(app_engine, new_inbox(app_engine, "telegram"), "Ada Lovelace")
    chat.assisted(chat.says("Hi, I ordered a lamp last week and it has still not arrived.", {"language_hint": "en"}))
    classified, reasoning, drafted, draft = chat.assisted(chat.says("Hello again", {"language_hint": "en"}))
    assert (classified, drafted) == ("en", "en") and draft.startswith("Hi Ada,")
    assert "language_code 'en'" in reasoning and "unsure" in reasoning


@pytest.mark.parametrize(("earlier", "message", "language"), [
    ("Hei, tilasin lampun viime viikolla, eikä se ole vieläkään tullut perille.", "ok", "fi"),
    ("Guten Tag, meine Bestellung ist seit zwei Wochen unterwegs und nicht angekommen.", "Danke", "de"),
    ("Bonjour, ma commande n'est toujours pas arrivée après deux semaines.", "ok merci", "fr"),
])
def test_a_conversations_earlier_language_decides_a_short_line(stack: dict[str, str], app_engine: Engine,
                                                               earlier: str, message: str, language: str) -> None:
    chat = Chat(app_engine, new_inbox(app_engine, "api"), "Ada Lovelace")
    chat.says(earlier)
    classified, reasoning, drafted, draft = chat.assisted(chat.says(message))
    assert (classified, drafted) == (language, language) and draft.startswith(GREETINGS[language])
    assert decide(message).source != "text"
    assert "the conversation's earlier messages (their text" in reasoning


def test_the_contacts_other_conversations_then_the_tenant_default(stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "postmark")
    set_default_language(app_engine, inbox.tenant_id, "de")
    chat = Chat(app_engine, inbox, "Ada Lovelace")
    chat.says("Hej, jag har fortfarande inte fått mitt paket och det har gått två veckor nu.")
    chat.conversation = chat.new_conversation()
    classified, reasoning, _, draft = chat.assisted(chat.says("ok"))
    assert classified == "sv" and "contact's other messages" in reasoning and draft.startswith("Hej Ada,")
    stranger = Chat(app_engine, inbox, "Ada Lovelace")
    classified, reasoning, _, draft = stranger.assisted(stranger.says("ok"))
    assert classified == "de" and "default_language" in reasoning and draft.startswith("Hallo Ada,")
    classified, reasoning, _, _ = stranger.assisted(stranger.says("Danke", {"headers": {"content-language": "fr"}}))
    assert classified == "fr" and "Content-Language header 'fr'" in reasoning


def test_a_long_text_decides_its_own_language_whatever_the_hints(stack: dict[str, str], app_engine: Engine) -> None:
    chat = Chat(app_engine, new_inbox(app_engine, "telegram"), "Ada Lovelace")
    classified, reasoning, drafted, _ = chat.assisted(chat.says(
        "Hola, mi pedido todavía no ha llegado y ya han pasado dos semanas.", {"language_hint": "en"}))
    assert (classified, drafted) == ("es", "es") and "its text" in reasoning


def test_evidence_order_without_a_database() -> None:
    earlier = [Earlier("Ich warte seit Wochen auf meine Bestellung, bitte helfen Sie mir.")]
    assert decide("ok", Evidence(hint="fi", conversation=earlier)).language == "fi"  # the channel first
    assert decide("ok", Evidence(hint="pt-BR", conversation=earlier)).language == "de"  # unserved hint ignored
    assert decide("ok", Evidence(conversation=[Earlier("ok", "sv")])).source == "conversation"  # earlier hint
    assert decide("ok", Evidence(tenant_default="es")).language == "es"
    assert decide("ok", Evidence(tenant_default="xx")).source == "guess"
    assert decide("", Evidence()).reason.startswith("its text, 0%")
    assert [normalise_hint(h) for h in ("en-US", "de, en;q=0.5", "pt_BR", 7, "", "FI")] == [
        "en", "de", None, None, None, "fi"]


def telegram_update(sender: dict[str, Any]) -> WebhookRequest:
    body = {"update_id": 1, "message": {"message_id": 5, "date": 1_700_000_000, "text": "Hej",
                                        "chat": {"id": 42, "type": "private"}, "from": sender}}
    return WebhookRequest(method="POST", url="https://x/", headers={"content-type": "application/json"},
                          body=orjson.dumps(body))


def api_message(contact: dict[str, Any]) -> WebhookRequest:
    body = {"id": "m1", "type": "message", "sent_at": "2026-11-01T09:00:00Z", "text": "ok", "contact": contact}
    return WebhookRequest(method="POST", url="https://x/", headers={"content-type": "application/json",
                                                                    "webhook-id": "msg_1"},
                          body=orjson.dumps(body))


def test_channels_carry_their_language_hints() -> None:
    (message,) = telegram.parse(telegram_update({"id": 7, "first_name": "Ada", "language_code": "sv"})).messages
    assert message.metadata["language_hint"] == "sv"
    (message,) = telegram.parse(telegram_update({"id": 7, "first_name": "Ada", "language_code": 5})).messages
    assert "language_hint" not in message.metadata  # a hint of the wrong type is no hint
    (message,) = api.parse(api_message({"email": "ada@example.com", "locale": "fi-FI"})).messages
    assert message.metadata["language_hint"] == "fi-FI"


@pytest.mark.parametrize("locale", [7, ["fi"], {"tag": "fi"}, "x" * 36])
def test_a_malformed_api_locale_is_refused(locale: object) -> None:
    with pytest.raises(PayloadError):
        api.parse(api_message({"email": "ada@example.com", "locale": locale}))


def test_an_odd_api_locale_is_kept_but_decides_nothing() -> None:
    (message,) = api.parse(api_message({"email": "ada@example.com", "locale": "\u202e\x00zz"})).messages
    assert normalise_hint(message.metadata["language_hint"]) is None


@pytest.mark.parametrize(("metadata", "language", "quoted"), [
    ({"headers": "not a header map"}, "en", None),  # the api channel keeps its sender's metadata as given
    ({"headers": ["content-language", "de"]}, "en", None),
    ({"language_hint": "de, " + "x" * 16_000}, "de", "'de'"),
    ({"headers": {"content-language": ", ".join(["fr-CA"] + ["xx-YY"] * 10_000)}}, "fr", "'fr-CA'"),
    ({"headers": {"content-language": "es-" + "\u202e\u200b" * 5_000}}, "es", "'es-'"),
])
def test_hostile_hints_and_metadata_never_fail_a_classification(stack: dict[str, str], app_engine: Engine,
                                                                metadata: dict[str, Any], language: str,
                                                                quoted: str | None) -> None:
    chat = Chat(app_engine, new_inbox(app_engine, "api"), "Ada Lovelace")
    message = "Hello, my order from last week has still not arrived." if quoted is None else "ok"
    classified, reasoning, drafted, _ = chat.assisted(chat.says(message, metadata))
    assert (classified, drafted) == (language, language)
    assert len(reasoning) <= 1000
    if quoted is not None:  # the reason quotes the tag that decided, not the rest of the header
        assert f"{quoted}; the text alone was unsure" in reasoning


def test_api_metadata_reaches_the_classifier_as_the_sender_gave_it() -> None:
    request = api_message({"email": "ada@example.com"})
    body = orjson.loads(request.body) | {"metadata": {"headers": "not a header map"}}
    (message,) = api.parse(WebhookRequest(method="POST", url=request.url, headers=request.headers,
                                          body=orjson.dumps(body))).messages
    assert message.metadata["headers"] == "not a header map"


@pytest.mark.parametrize("text", ["ok \ud800", "\ud800\udfff Danke", "\x00" * 3, "\u202e\u200b\ufeff", ""])
def test_odd_unicode_is_read_without_error(text: str) -> None:
    decision = decide(text, Evidence(hint="de"))
    assert decision.language in ("en", "fi", "sv", "de", "es", "fr") and decision.reason
