"""SendGrid Inbound Parse: multipart form posts, authenticated with HTTP Basic credentials in the URL.

Two shapes. Parsed (the default): `text`, `html`, `subject`, `from`, `to`, `cc` and `headers` are fields,
each left in the email's own charset, which the `charsets` field names per field (a JSON object such as
{"text": "iso-8859-1", "subject": "UTF-8"}). "POST the raw, full MIME message": the whole message is the
`email` field, parsed here like Mailgun's `body-mime`.

SendGrid has no id of its own for a message, so an email's id is a digest of its sender and Message-ID
(see `email.external_id`): the same for SendGrid's retries, different for a stranger reusing the id.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipelines.channels import email
from pipelines.channels.base import (
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    WebhookRequest,
    first,
    refusing,
    verify_basic_auth,
)

CHANNEL = "sendgrid"


verify = verify_basic_auth


def _json_object(raw: str | None) -> dict[str, Any]:
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _charsets(parts: list[email.FormPart]) -> dict[str, str]:
    """SendGrid's `charsets` field: which charset each other field is in."""
    raw = next((p.data for p in parts if p.name == "charsets"), b"")
    return {str(k): v for k, v in _json_object(raw.decode("utf-8", "replace")).items() if isinstance(v, str)}


def _attachments(parts: list[email.FormPart], info: dict[str, Any]) -> tuple[Attachment, ...]:
    found = []
    for part in parts:
        if part.filename is not None:
            meta = info.get(part.name)
            content_id = meta.get("content-id") if isinstance(meta, dict) else None
            found.append(Attachment(filename=part.filename, content_type=part.content_type, size=len(part.data),
                                    provider_id=str(content_id) if content_id else None))
    return tuple(found)


@refusing
def parse(request: WebhookRequest) -> Delivery:
    if request.content_type != "multipart/form-data":
        raise PayloadError("SendGrid Inbound Parse posts multipart/form-data")
    parts = email.form_parts(request)
    charsets = _charsets(parts)
    fields = email.text_fields(parts, charsets)
    raw_mime = next((p.data for p in parts if p.name == "email" and p.filename is None), None)
    if raw_mime is not None:
        mime = email.parse_mime(raw_mime)
        pairs, text, html = mime.headers, mime.text, mime.html
        attachments = mime.attachments
    else:
        block = next((p for p in parts if p.name == "headers" and p.filename is None), None)
        pairs = email.header_pairs(block.data, block.charset or charsets.get("headers")) if block else []
        text, html = first(fields, "text") or "", first(fields, "html") or None
        attachments = _attachments(parts, _json_object(first(fields, "attachment-info")))

    def field(name: str) -> str | None:
        """A field of the parsed shape, else the header of the same name (the raw shape has only those)."""
        value = first(fields, name) if raw_mime is None else None
        return value or email.header(pairs, name)

    headers = email.kept_headers(pairs)
    name, sender = email.address(field("from"))
    if not sender:
        sender = _json_object(first(fields, "envelope")).get("from")
        sender = sender if isinstance(sender, str) and sender.strip() else None
    if not sender:
        raise PayloadError("missing sender ('from')")
    rfc_id = email.rfc_id(email.header(pairs, "message-id"))
    external_id = email.external_id(sender, rfc_id, request.body)
    attachments, omitted = email.capped_attachments(attachments)
    message = InboundMessage(
        channel=CHANNEL,
        external_id=external_id,
        sent_at=email.header_date(headers.get("date")) or request.received_at,
        kind="email",
        sender_name=name,
        identities=(Identity(kind="email", value=sender),),
        recipients=email.addresses(field("to")) + email.addresses(field("cc")),
        text=text,
        html=html or None,
        subject=email.decode_words(field("subject") or "") or None,
        rfc_message_id=rfc_id,
        in_reply_to=next(iter(email.thread_ids(email.header(pairs, "in-reply-to"))), None),
        references=email.thread_ids(email.header(pairs, "references")),
        attachments=attachments,
        headers=headers,
        metadata={"spf": first(fields, "SPF"), "dkim": first(fields, "dkim"), **omitted},
    )
    return Delivery(dedupe_key=external_id, messages=(message,))
