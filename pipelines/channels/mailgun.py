"""Mailgun inbound routes: parsed form posts (urlencoded or multipart) or raw MIME (`body-mime`).

Authenticity: `signature` = hex(HMAC-SHA256(webhook signing key, timestamp + token)). The signature does
not cover the body, so a captured (timestamp, token, signature) could be replayed with another body: a
token is accepted once, and only within the timestamp window.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import orjson

from pipelines.channels import email
from pipelines.channels.base import (
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    SignatureError,
    VerifyContext,
    WebhookRequest,
    body_digest,
    constant_time_equal,
    first,
    form_fields,
    multipart_parts,
)

CHANNEL = "mailgun"


def signature(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def verify(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    try:
        fields = form_fields(request)
    except PayloadError:
        fields = {}
    timestamp = first(fields, "timestamp") or ""
    token = first(fields, "token") or ""
    given = first(fields, "signature") or ""
    expected = signature(secrets["signing_key"], timestamp, token)
    signed = constant_time_equal(expected, given) and bool(given)
    try:
        age = abs(context.now.timestamp() - int(timestamp))
    except ValueError:
        age = float("inf")
    fresh = age <= context.tolerance_seconds
    if not (signed and fresh):
        raise SignatureError("signature verification failed")


def replay_token(request: WebhookRequest) -> str | None:
    """The one-time token the ingress claims after `verify`, so a replayed token is refused."""
    try:
        return first(form_fields(request), "token")
    except PayloadError:
        return None


def _from_mime(raw: str, fields: Mapping[str, list[str]]) -> dict[str, object]:
    msg = message_from_bytes(raw.encode("utf-8", errors="surrogateescape"), policy=default)
    assert isinstance(msg, EmailMessage)
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    attachments = [
        Attachment(filename=p.get_filename(), content_type=p.get_content_type(),
                   size=len(p.get_payload(decode=True) or b""))
        for p in msg.iter_attachments()
    ]
    return {
        "headers": [(k, str(v)) for k, v in msg.items()],
        "text": text_part.get_content() if text_part is not None else "",
        "html": html_part.get_content() if html_part is not None else None,
        "attachments": attachments,
    }


def parse(request: WebhookRequest) -> Delivery:
    fields = form_fields(request)
    mime = first(fields, "body-mime")
    attachments: list[Attachment] = []
    if mime:
        try:
            parts = _from_mime(mime, fields)
        except Exception:  # the stdlib parser raises many types on hostile MIME
            raise PayloadError("malformed body-mime") from None
        pairs = parts["headers"]
        text, html = str(parts["text"]), parts["html"]
        attachments = list(parts["attachments"])  # type: ignore[call-overload]
    else:
        try:
            header_list = orjson.loads(first(fields, "message-headers") or "[]")
        except orjson.JSONDecodeError:
            raise PayloadError("message-headers is not JSON") from None
        pairs = [(str(h[0]), str(h[1])) for h in header_list if isinstance(h, list) and len(h) == 2]
        text, html = first(fields, "body-plain") or "", first(fields, "body-html")
        if request.content_type == "multipart/form-data":
            attachments = [
                Attachment(filename=p.get_filename(), content_type=p.get_content_type(),
                           size=len(p.get_payload(decode=True) or b""))
                for _, p in multipart_parts(request) if p.get_filename() is not None
            ]
    headers = email.kept_headers(pairs)  # type: ignore[arg-type]
    name, sender = email.address(first(fields, "from") or first(fields, "From"))
    sender = sender or first(fields, "sender")
    if not sender:
        raise PayloadError("missing sender ('from' or 'sender')")
    rfc_id = email.first_id(first(fields, "Message-Id") or headers.get("message-id"))
    external_id = rfc_id or body_digest(request.body)
    message = InboundMessage(
        channel=CHANNEL,
        external_id=external_id,
        sent_at=email.header_date(headers.get("date")) or request.received_at,
        kind="email",
        sender_name=name,
        identities=(Identity(kind="email", value=sender),),
        recipients=email.addresses(first(fields, "recipient") or first(fields, "To")),
        text=text,
        html=str(html) if html else None,
        subject=first(fields, "subject") or first(fields, "Subject") or None,
        stripped_reply=first(fields, "stripped-text") or None,
        rfc_message_id=rfc_id,
        in_reply_to=email.first_id(first(fields, "In-Reply-To") or headers.get("in-reply-to")),
        references=email.message_ids(first(fields, "References") or headers.get("references")),
        attachments=tuple(attachments),
        headers=headers,
        metadata={"stripped_signature": first(fields, "stripped-signature") or None},
    )
    return Delivery(dedupe_key=external_id, messages=(message,))
