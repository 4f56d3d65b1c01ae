"""Telegram Bot API updates: message, edited_message and channel_post.

Authenticity: the X-Telegram-Bot-Api-Secret-Token header equals the secret_token given to setWebhook.
Retries are recognised by update_id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.channels.base import (
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    SignatureError,
    VerifyContext,
    WebhookRequest,
    constant_time_equal,
    expect_dict,
    from_unix,
    json_body,
    refusing,
)

CHANNEL = "telegram"
UPDATE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")
MEDIA = {"photo": "image", "video": "video", "voice": "audio", "audio": "audio", "document": "document",
         "sticker": "sticker", "animation": "video", "video_note": "video"}


def verify(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    given = request.header("x-telegram-bot-api-secret-token") or ""
    if not constant_time_equal(given, secrets["secret_token"]) or not given:
        raise SignatureError("signature verification failed")


def _name(person: Mapping[str, Any]) -> str | None:
    parts = [str(person.get(k)) for k in ("first_name", "last_name") if person.get(k)]
    fallback = person.get("title") or person.get("username")
    return " ".join(parts) or (str(fallback) if fallback else None)


def _size(value: Any) -> int | None:
    """A file size, if Telegram gave one as an integer: it is informational, so anything else is dropped."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reply_to(chat_id: Any, replied: Any) -> str | None:
    """The external id of the message this one answers, when Telegram names it."""
    if isinstance(replied, dict) and replied.get("message_id") is not None:
        return f"{chat_id}:{replied['message_id']}"
    return None


@refusing
def parse(request: WebhookRequest) -> Delivery:
    update = expect_dict(json_body(request), "body")
    update_id = update.get("update_id")
    if not isinstance(update_id, int):
        raise PayloadError("missing integer 'update_id'")
    kind_key = next((k for k in UPDATE_KINDS if k in update), None)
    if kind_key is None:
        # Other update types (callback queries, polls...) are acknowledged and carry no message.
        return Delivery(dedupe_key=f"update:{update_id}")
    msg = expect_dict(update[kind_key], kind_key)
    chat = expect_dict(msg.get("chat", {}), "chat")
    author = msg.get("from") if isinstance(msg.get("from"), dict) else msg.get("sender_chat")
    if not isinstance(author, dict) or "id" not in author or "id" not in chat or "message_id" not in msg:
        raise PayloadError("a Telegram message needs message_id, chat.id and from.id or sender_chat.id")
    kind = "text"
    attachments: tuple[Attachment, ...] = ()
    metadata: dict[str, Any] = {"chat_id": chat["id"], "chat_type": chat.get("type"), "update": kind_key}
    for key, mapped in MEDIA.items():
        if key in msg:
            media = msg[key][-1] if key == "photo" and isinstance(msg[key], list) and msg[key] else msg[key]
            media = media if isinstance(media, dict) else {}
            attachments = (Attachment(provider_id=media.get("file_id"), filename=media.get("file_name"),
                                      content_type=media.get("mime_type"), size=_size(media.get("file_size"))),)
            kind = mapped
            break
    if "location" in msg:
        kind, metadata["location"] = "location", msg["location"]
    if "contact" in msg:
        kind, metadata["contact"] = "contacts", msg["contact"]
    if author.get("username"):
        metadata["username"] = author["username"]
    if isinstance(author.get("language_code"), str):  # the sender's app language: evidence for short lines
        metadata["language_hint"] = author["language_code"][:35]
    message = InboundMessage(
        channel=CHANNEL,
        # message_id is unique within a chat; an edit keeps the id of the message it changes.
        external_id=f"{chat['id']}:{msg['message_id']}",
        sent_at=from_unix(msg.get("date")),
        kind=kind,  # type: ignore[arg-type]
        sender_name=_name(author),
        identities=(Identity(kind="telegram", value=str(author["id"])),),
        text=str(msg.get("text") or msg.get("caption") or ""),
        attachments=attachments,
        in_reply_to=_reply_to(chat["id"], msg.get("reply_to_message")),
        metadata=metadata,
        edited=kind_key.startswith("edited_"),
    )
    return Delivery(dedupe_key=f"update:{update_id}", messages=(message,))
