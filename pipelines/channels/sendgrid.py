"""SendGrid Inbound Parse: multipart form posts, authenticated with HTTP Basic credentials in the URL."""

from __future__ import annotations

import orjson

from pipelines.channels import email
from pipelines.channels.base import (
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    WebhookRequest,
    body_digest,
    first,
    form_fields,
    multipart_parts,
    verify_basic_auth,
)

CHANNEL = "sendgrid"


verify = verify_basic_auth


def parse(request: WebhookRequest) -> Delivery:
    if request.content_type != "multipart/form-data":
        raise PayloadError("SendGrid Inbound Parse posts multipart/form-data")
    fields = form_fields(request)
    headers_raw = first(fields, "headers") or ""
    pairs = email.header_block(headers_raw) if headers_raw else []
    headers = email.kept_headers(pairs)
    name, sender = email.address(first(fields, "from"))
    if not sender:
        try:
            envelope = orjson.loads(first(fields, "envelope") or "{}")
            sender = envelope.get("from") if isinstance(envelope, dict) else None
        except orjson.JSONDecodeError:
            sender = None
    if not sender:
        raise PayloadError("missing sender ('from')")
    rfc_id = email.first_id(headers.get("message-id"))
    info: dict[str, dict[str, object]] = {}
    try:
        parsed_info = orjson.loads(first(fields, "attachment-info") or "{}")
        info = parsed_info if isinstance(parsed_info, dict) else {}
    except orjson.JSONDecodeError:
        info = {}
    attachments = []
    for field_name, part in multipart_parts(request):
        if part.get_filename() is not None:
            payload = part.get_payload(decode=True)
            meta = info.get(field_name, {}) if isinstance(info.get(field_name), dict) else {}
            attachments.append(Attachment(
                filename=part.get_filename(), content_type=part.get_content_type(),
                size=len(payload) if isinstance(payload, bytes) else None,
                provider_id=str(meta.get("content-id")) if meta.get("content-id") else None,
            ))
    external_id = rfc_id or body_digest(request.body)
    message = InboundMessage(
        channel=CHANNEL,
        external_id=external_id,
        sent_at=email.header_date(headers.get("date")) or request.received_at,
        kind="email",
        sender_name=name,
        identities=(Identity(kind="email", value=sender),),
        recipients=email.addresses(first(fields, "to")) + email.addresses(first(fields, "cc")),
        text=first(fields, "text") or "",
        html=first(fields, "html") or None,
        subject=first(fields, "subject") or None,
        rfc_message_id=rfc_id,
        in_reply_to=email.first_id(headers.get("in-reply-to")),
        references=email.message_ids(headers.get("references")),
        attachments=tuple(attachments),
        headers=headers,
        metadata={"spf": first(fields, "SPF"), "dkim": first(fields, "dkim")},
    )
    return Delivery(dedupe_key=external_id, messages=(message,))
