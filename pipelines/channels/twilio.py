"""Twilio Programmable Messaging (SMS, MMS and WhatsApp) inbound webhooks and status callbacks.

Authenticity: X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL + each POST parameter's name and
value, sorted by name)). JSON posts carry `bodySHA256` in the query string; then only the URL is signed
and the body's SHA-256 must match. Twilio may or may not include the default port in the URL it signs, so
both forms are tried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

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
    constant_time_equal,
    expect_dict,
    first,
    json_body,
    refusing,
    require,
)

CHANNEL = "twilio"
_STATUS = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued", "sending": "queued",
    "sent": "sent", "delivered": "delivered", "read": "read",
    "failed": "failed", "undelivered": "failed", "canceled": "failed",
}


def signature(auth_token: str, url: str, params: Mapping[str, list[str]]) -> str:
    """The X-Twilio-Signature Twilio computes for a POST to `url` with form `params`."""
    payload = url + "".join(name + value for name in sorted(params) for value in sorted(params[name]))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    given = request.header("x-twilio-signature") or ""
    token = secrets["auth_token"]
    urls = (request.url, *request.alternate_urls)
    body_hash = parse_qs(urlsplit(request.url).query).get("bodySHA256")
    if body_hash:
        # JSON variant: the URL (with bodySHA256) is signed, and the body must hash to it.
        actual = hashlib.sha256(request.body).hexdigest()
        body_ok = constant_time_equal(actual, body_hash[0].lower())
        url_ok = any(constant_time_equal(signature(token, url, {}), given) for url in urls)
        if body_ok and url_ok:
            return
        raise SignatureError("signature verification failed")
    try:
        params = request.form if request.content_type == "application/x-www-form-urlencoded" else {}
    except PayloadError:
        params = {}
    if any(constant_time_equal(signature(token, url, params), given) for url in urls) and given:
        return
    raise SignatureError("signature verification failed")


def _fields(request: WebhookRequest) -> dict[str, list[str]]:
    if request.content_type == "application/json":
        data = expect_dict(json_body(request), "body")
        return {str(k): [str(v)] for k, v in data.items() if v is not None}
    return request.form


def _sender(raw: str, fields: Mapping[str, list[str]]) -> tuple[Identity, ...]:
    # "whatsapp:+14155550101" is the same phone as "+14155550101"; normalization strips the prefix.
    if raw.startswith("messenger:"):
        return (Identity(kind="external", value=raw),)
    return (Identity(kind="phone", value=raw),)


@refusing
def parse(request: WebhookRequest) -> Delivery:
    fields = _fields(request)
    sid = first(fields, "MessageSid") or first(fields, "SmsMessageSid") or first(fields, "SmsSid")
    if not sid:
        raise PayloadError("missing field 'MessageSid'")
    now = request.received_at
    status = (first(fields, "MessageStatus") or first(fields, "SmsStatus") or "received").lower()
    if status != "received":
        mapped = _STATUS.get(status)
        if mapped is None:
            raise PayloadError(f"unknown MessageStatus {status!r}")
        error = first(fields, "ErrorCode")
        update = StatusUpdate(
            channel=CHANNEL, external_id=sid, status=mapped, at=now,  # type: ignore[arg-type]
            error=f"{error}: {first(fields, 'ErrorMessage') or ''}".strip(": ") if error else None,
        )
        return Delivery(dedupe_key=f"{sid}:{status}", statuses=(update,))

    sender = require(fields, "From")
    try:
        num_media = int(first(fields, "NumMedia") or "0")
    except ValueError:
        raise PayloadError("NumMedia is not a number") from None
    attachments = tuple(
        Attachment(url=first(fields, f"MediaUrl{i}"), content_type=first(fields, f"MediaContentType{i}"))
        for i in range(min(num_media, 10))
    )
    kind = "text"
    metadata: dict[str, object] = {"whatsapp": sender.startswith("whatsapp:")}
    if first(fields, "Latitude") and first(fields, "Longitude"):
        kind = "location"
        metadata["location"] = {
            "latitude": first(fields, "Latitude"), "longitude": first(fields, "Longitude"),
            "address": first(fields, "Address"), "label": first(fields, "Label"),
        }
    elif attachments:
        ctype = attachments[0].content_type or ""
        kind = {"image": "image", "audio": "audio", "video": "video"}.get(ctype.split("/")[0], "document")
    for extra in ("ButtonText", "ButtonPayload", "ProfileName", "WaId", "FromCity", "FromCountry", "AccountSid"):
        if first(fields, extra):
            metadata[extra] = first(fields, extra)
    message = InboundMessage(
        channel=CHANNEL,
        external_id=sid,
        sent_at=now,
        kind=kind,  # type: ignore[arg-type]
        sender_name=first(fields, "ProfileName"),
        identities=_sender(sender, fields),
        recipients=tuple(v for v in [first(fields, "To")] if v),
        text=first(fields, "Body") or first(fields, "ButtonText") or "",
        attachments=attachments,
        metadata=metadata,
    )
    return Delivery(dedupe_key=sid, messages=(message,))
