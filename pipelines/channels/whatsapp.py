"""Meta WhatsApp Cloud API webhooks: messages and statuses, batched in entries and changes.

Authenticity: X-Hub-Signature-256 = "sha256=" + hex(HMAC-SHA256(app secret, raw body)). Meta signs the
bytes it sends (with escaped unicode), so the check runs on the received bytes, never a re-serialization.
Subscription: GET with hub.mode=subscribe, hub.verify_token and hub.challenge; see `handshake`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from pipelines.channels.base import (
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    SignatureError,
    StatusUpdate,
    VerifyContext,
    WebhookRequest,
    batch_key,
    constant_time_equal,
    expect_dict,
    from_unix,
    json_body,
    refusing,
)

CHANNEL = "whatsapp"
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
KNOWN_KINDS = {"text", "location", "contacts", "interactive", "reaction", "button", *MEDIA_KINDS}


def signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    given = request.header("x-hub-signature-256") or ""
    if not constant_time_equal(signature(secrets["app_secret"], request.body), given.strip().lower()) or not given:
        raise SignatureError("signature verification failed")


def handshake(query: Mapping[str, str], secrets: Mapping[str, str]) -> str:
    """The challenge to echo when Meta's subscription request carries our verify token."""
    token = query.get("hub.verify_token", "")
    ok = constant_time_equal(token, secrets["verify_token"])
    if query.get("hub.mode") != "subscribe" or not ok or "hub.challenge" not in query:
        raise SignatureError("verify token mismatch")
    return query["hub.challenge"]


def _message(raw: dict[str, Any], names: Mapping[str, str], phone_number_id: str | None) -> InboundMessage:
    sender = str(raw.get("from") or "")
    mid = str(raw.get("id") or "")
    if not sender or not mid:
        raise PayloadError("a WhatsApp message needs 'from' and 'id'")
    kind = str(raw.get("type") or "unknown")
    text = ""
    attachments: tuple[Attachment, ...] = ()
    metadata: dict[str, Any] = {"phone_number_id": phone_number_id, "type": kind}
    if kind == "text":
        text = str(expect_dict(raw.get("text", {}), "text").get("body", ""))
    elif kind in MEDIA_KINDS:
        media = expect_dict(raw.get(kind, {}), kind)
        text = str(media.get("caption") or "")
        attachments = (Attachment(
            provider_id=media.get("id"), content_type=media.get("mime_type"), filename=media.get("filename"),
        ),)
    elif kind == "location":
        loc = expect_dict(raw.get("location", {}), "location")
        metadata["location"] = loc
        text = " ".join(str(loc[k]) for k in ("name", "address") if loc.get(k))
    elif kind == "interactive":
        interactive = expect_dict(raw.get("interactive", {}), "interactive")
        reply = interactive.get("button_reply") or interactive.get("list_reply") or {}
        metadata["interactive"] = interactive
        text = str(expect_dict(reply, "reply").get("title", ""))
    elif kind == "button":
        button = expect_dict(raw.get("button", {}), "button")
        metadata["button"] = button
        kind, text = "interactive", str(button.get("text", ""))
    elif kind == "reaction":
        reaction = expect_dict(raw.get("reaction", {}), "reaction")
        metadata["reaction"] = reaction
        text = str(reaction.get("emoji") or "")
    elif kind == "contacts":
        metadata["contacts"] = raw.get("contacts")
    else:
        # Unknown or unsupported types are kept whole, never dropped.
        metadata["raw"] = raw
        kind = "unknown"
    context = raw.get("context")
    if isinstance(context, dict) and context.get("id"):
        metadata["context"] = context
    return InboundMessage(
        channel=CHANNEL,
        external_id=mid,
        sent_at=from_unix(raw.get("timestamp")),
        kind=kind if kind in KNOWN_KINDS | {"unknown"} else "unknown",  # type: ignore[arg-type]
        sender_name=names.get(sender),
        identities=(Identity(kind="phone", value="+" + sender.lstrip("+")),),
        text=text,
        attachments=attachments,
        in_reply_to=context.get("id") if isinstance(context, dict) else None,
        metadata=metadata,
    )


def _status(raw: dict[str, Any]) -> StatusUpdate:
    status = raw.get("status")
    if status not in ("sent", "delivered", "read", "failed"):
        raise PayloadError(f"unknown WhatsApp status {status!r}")
    errors = raw.get("errors") or []
    error = None
    if errors and isinstance(errors, list) and isinstance(errors[0], dict):
        error = f"{errors[0].get('code', '')}: {errors[0].get('title', '')}".strip(": ")
    return StatusUpdate(channel=CHANNEL, external_id=str(raw.get("id") or ""), status=status,
                        at=from_unix(raw.get("timestamp")), error=error)


def _list(value: Any, what: str) -> list[Any]:
    """A documented list field: absent or null is empty; any other type is malformed."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"'{what}' must be a list")
    return value


@refusing
def parse(request: WebhookRequest) -> Delivery:
    data = expect_dict(json_body(request), "body")
    if data.get("object") != "whatsapp_business_account":
        raise PayloadError("not a WhatsApp Business Account notification")
    entries = data.get("entry")
    if not isinstance(entries, list):
        raise PayloadError("'entry' must be a list")
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    for entry in entries:
        for change in _list(expect_dict(entry, "entry").get("changes"), "changes"):
            change = expect_dict(change, "change")
            if change.get("field") != "messages":
                continue
            value = expect_dict(change.get("value", {}), "value")
            metadata: dict[str, Any] = value["metadata"] if isinstance(value.get("metadata"), dict) else {}
            phone_number_id = metadata.get("phone_number_id")
            names = {
                str(c.get("wa_id")): str(c.get("profile", {}).get("name"))
                for c in _list(value.get("contacts"), "contacts")
                if isinstance(c, dict) and isinstance(c.get("profile"), dict) and c["profile"].get("name")
            }
            messages.extend(_message(expect_dict(m, "message"), names, phone_number_id)
                            for m in _list(value.get("messages"), "messages"))
            statuses.extend(_status(expect_dict(s, "status")) for s in _list(value.get("statuses"), "statuses"))
    keys = [m.external_id for m in messages] + [f"{s.external_id}:{s.status}" for s in statuses]
    return Delivery(dedupe_key=batch_key(keys, request.body), messages=tuple(messages), statuses=tuple(statuses))
