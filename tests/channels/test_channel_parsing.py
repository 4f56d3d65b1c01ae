"""Each documented payload shape, parsed into the provider-neutral models."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.channels import ADAPTERS, PayloadError, WebhookRequest, email
from tests.webhooks import fixture

RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def parse(channel: str, name: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    body, ctype = fixture(f"{channel}/{name}")
    request = WebhookRequest(method="POST", url="https://hooks.example.com/x", body=body,
                             headers={"content-type": ctype, **(headers or {})}, received_at=RECEIVED)
    return ADAPTERS[channel].parse(request)


def test_twilio_sms() -> None:
    delivery = parse("twilio", "sms_inbound.form")
    (msg,) = delivery.messages
    assert delivery.dedupe_key == "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    assert msg.external_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    assert [(i.kind, i.value) for i in msg.identities] == [("phone", "+14155550101")]
    assert msg.text == "Hi, my order #1234 has not arrived yet"
    assert msg.recipients == ("+15557654321",)
    assert msg.sent_at == RECEIVED and msg.kind == "text"


def test_twilio_whatsapp_keeps_the_prefix_for_normalization_and_the_profile_name() -> None:
    (msg,) = parse("twilio", "whatsapp_inbound.form").messages
    assert msg.identities[0].value == "whatsapp:+14155550101"
    assert msg.sender_name == "Maria García"
    assert msg.metadata["whatsapp"] is True and msg.metadata["WaId"] == "14155550101"


def test_twilio_mms_media_metadata() -> None:
    (msg,) = parse("twilio", "mms_inbound.form").messages
    assert msg.kind == "image"
    assert [a.content_type for a in msg.attachments] == ["image/jpeg", "image/png"]
    assert msg.attachments[0].url and msg.attachments[0].url.endswith("/Media/ME1")


def test_twilio_whatsapp_location() -> None:
    (msg,) = parse("twilio", "whatsapp_location.form").messages
    assert msg.kind == "location"
    assert msg.metadata["location"]["latitude"] == "60.1699"


@pytest.mark.parametrize(("name", "status", "error"), [
    ("status_delivered.form", "delivered", None),
    ("status_undelivered.form", "failed", "30003: Unreachable destination handset"),
])
def test_twilio_status_callbacks(name: str, status: str, error: str | None) -> None:
    delivery = parse("twilio", name)
    assert delivery.messages == ()
    (update,) = delivery.statuses
    assert (update.status, update.error) == (status, error)
    assert delivery.dedupe_key.startswith(update.external_id + ":")


def test_whatsapp_text() -> None:
    delivery = parse("whatsapp", "text.json")
    (msg,) = delivery.messages
    assert msg.external_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    assert delivery.dedupe_key == msg.external_id
    assert (msg.identities[0].kind, msg.identities[0].value) == ("phone", "+16505551234")
    assert msg.sender_name == "Sheena Nelson"
    assert msg.text == "Does it come in another color?"
    assert msg.sent_at == datetime.fromtimestamp(1749416383, tz=UTC)
    assert msg.metadata["phone_number_id"] == "106540352242922"


def test_whatsapp_image_location_interactive_reaction() -> None:
    (image,) = parse("whatsapp", "image.json").messages
    assert image.kind == "image" and image.text == "The box arrived crushed"
    assert image.attachments[0].provider_id == "1003383421387256"
    (location,) = parse("whatsapp", "location.json").messages
    assert location.kind == "location" and location.metadata["location"]["latitude"] == 37.483307
    assert "Main office" in location.text
    (button,) = parse("whatsapp", "interactive_button_reply.json").messages
    assert button.kind == "interactive" and button.text == "Change delivery date"
    assert button.in_reply_to == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    (reaction,) = parse("whatsapp", "reaction.json").messages
    assert reaction.kind == "reaction" and reaction.text == "\N{THUMBS UP SIGN}"


def test_whatsapp_unknown_types_are_kept_whole() -> None:
    (msg,) = parse("whatsapp", "unsupported.json").messages
    assert msg.kind == "unknown"
    assert msg.metadata["raw"]["errors"][0]["code"] == 131051


def test_whatsapp_statuses() -> None:
    delivery = parse("whatsapp", "statuses.json")
    assert [(s.status, s.error) for s in delivery.statuses] == [
        ("delivered", None), ("failed", "131026: Message undeliverable")]


def test_whatsapp_batch_of_entries_changes_messages_and_statuses() -> None:
    delivery = parse("whatsapp", "batch.json")
    assert [m.external_id for m in delivery.messages] == ["wamid.batch.1", "wamid.batch.2", "wamid.batch.3"]
    assert delivery.messages[0].sender_name == "Jürgen Müller"
    assert delivery.messages[0].text == "Grüß Gott, meine Rechnung ist falsch"
    assert delivery.messages[2].metadata["phone_number_id"] == "106540352242923"
    assert [s.status for s in delivery.statuses] == ["read"]
    assert delivery.dedupe_key.startswith("batch:")


def test_postmark_inbound() -> None:
    delivery = parse("postmark", "inbound.json")
    (msg,) = delivery.messages
    assert delivery.dedupe_key == "73e6d360-66eb-11e1-8e72-a8904824019b"
    assert msg.external_id == delivery.dedupe_key  # Postmark's own id: no sender can claim it first
    assert msg.rfc_message_id == "CAKDvkCV7Mu=zJ5y@mail.gmail.com"
    assert msg.identities[0].value == "Support@Postmarkapp.com" and msg.sender_name == "Postmarkapp Support"
    assert msg.subject == "Test subject" and msg.stripped_reply == "This is the reply text"
    assert msg.in_reply_to == "case-1001@help.example.com"
    assert msg.references == ("case-1000@help.example.com", "case-1001@help.example.com")
    assert msg.recipients[0] == "yourhash+SampleHash@inbound.postmarkapp.com"
    assert msg.attachments[0].filename == "test.txt" and msg.attachments[0].size == 45
    assert msg.html and "test html body" in msg.html
    assert msg.sent_at.utcoffset() is not None


def test_postmark_auto_reply_headers_are_kept() -> None:
    (msg,) = parse("postmark", "auto_reply.json").messages
    assert msg.headers["auto-submitted"] == "auto-replied"
    assert msg.headers["precedence"] == "auto_reply"


def test_sendgrid_inbound_parse() -> None:
    delivery = parse("sendgrid", "inbound.multipart")
    (msg,) = delivery.messages
    assert msg.rfc_message_id == "CAHXy7p2S+4M@mail.example.com"
    assert msg.external_id == delivery.dedupe_key == email.external_id("test@example.com", msg.rfc_message_id, b"")
    assert msg.identities[0].value == "Test@Example.com" and msg.sender_name == "Example User"
    assert msg.subject == "Test Subject" and msg.text == "This is a test email with 1 attachment."
    assert msg.in_reply_to == "ticket-77@help.example.com"
    assert [(a.filename, a.content_type) for a in msg.attachments] == [("invoice.pdf", "application/pdf")]


def test_mailgun_inbound_route() -> None:
    delivery = parse("mailgun", "inbound.form")
    (msg,) = delivery.messages
    assert msg.rfc_message_id == "CAF=abc123@mail.customer.example"
    assert msg.identities[0].value == "bob@customer.example" and msg.sender_name == "Bob Builder"
    assert msg.stripped_reply == "Thanks, that works."
    assert msg.references == ("case-1@help.example.com", "reply-1@help.example.com")
    assert msg.in_reply_to == "reply-1@help.example.com"
    assert msg.sent_at == datetime(2026, 11, 17, 8, 15, tzinfo=UTC)


def test_telegram_updates() -> None:
    message = parse("telegram", "message.json")
    (msg,) = message.messages
    assert message.dedupe_key == "update:10000"
    assert msg.external_id == "1111111:1365" and msg.text == "/start"
    assert (msg.identities[0].kind, msg.identities[0].value) == ("telegram", "1111111")
    assert msg.sender_name == "Test Firstname Test Lastname" and not msg.edited
    (edited,) = parse("telegram", "edited_message.json").messages
    assert edited.edited and edited.external_id == msg.external_id and edited.text == "Edited text"
    (post,) = parse("telegram", "channel_post.json").messages
    assert post.identities[0].value == "-1001234567890" and post.sender_name == "Shop announcements"
    (photo,) = parse("telegram", "photo.json").messages
    assert photo.kind == "image" and photo.attachments[0].provider_id == "AgAD-large"
    assert photo.text == "Rikkinäinen paketti"


def test_api_message_and_batch() -> None:
    delivery = parse("api", "message.json", {"webhook-id": "msg_1"})
    (msg,) = delivery.messages
    assert delivery.dedupe_key == "msg_1"
    assert sorted((i.kind, i.value) for i in msg.identities) == [
        ("email", "Erik.Svensson@example.se"), ("external", "crm-4471"), ("phone", "070-123 45 67")]
    assert msg.sent_at == datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
    batch = parse("api", "batch.json", {"webhook-id": "msg_2"})
    assert [m.external_id for m in batch.messages] == ["widget-1", "widget-2"]
    assert batch.messages[1].attachments[0].size == 2048
    assert [(s.external_id, s.status) for s in batch.statuses] == [("agent-reply-7", "read")]


@pytest.mark.parametrize(("channel", "body", "ctype", "match"), [
    ("api", b'{"id": "x", "type": "message", "sent_at": "2026-01-01T00:00:00", "text": "hi", '
            b'"contact": {"email": "a@b.co"}}', "application/json", "time zone"),
    ("api", b'{"id": "x", "type": "message", "sent_at": "2026-01-01T00:00:00Z", "text": "hi", "contact": {}}',
     "application/json", "at least one"),
    ("api", b"not json", "application/json", "not valid JSON"),
    ("whatsapp", b'{"object": "page"}', "application/json", "WhatsApp"),
    ("telegram", b'{"message": {}}', "application/json", "update_id"),
    ("twilio", b"Body=hi", "application/x-www-form-urlencoded", "MessageSid"),
    ("postmark", b"[]", "application/json", "JSON object"),
    ("sendgrid", b"x", "text/plain", "multipart"),
    ("mailgun", b"\xff\xfe", "application/x-www-form-urlencoded", "UTF-8"),
])
def test_malformed_payloads_are_refused_with_a_reason(channel: str, body: bytes, ctype: str, match: str) -> None:
    request = WebhookRequest(method="POST", url="https://h/x", body=body,
                             headers={"content-type": ctype, "webhook-id": "m"}, received_at=RECEIVED)
    with pytest.raises(PayloadError, match=match):
        ADAPTERS[channel].parse(request)
