"""Postmark inbound email: JSON posts, authenticated with HTTP Basic credentials in the webhook URL.

JSON is UTF-8, and Postmark decodes the subject and names for us; header values may still carry RFC 2047
encoded words, which `email.kept_headers` decodes. A message's id is Postmark's own `MessageID`, never the
sender's Message-ID, so no other sender can claim it first; the Message-ID is kept for threading.
"""

from __future__ import annotations

from typing import Any

from pipelines.channels import email
from pipelines.channels.base import (
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    WebhookRequest,
    expect_dict,
    json_body,
    refusing,
    verify_basic_auth,
)

CHANNEL = "postmark"


verify = verify_basic_auth


def _text(value: Any) -> str | None:
    """A documented string field; any other JSON type is treated as absent."""
    return value if isinstance(value, str) and value else None


def _recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(address for r in value if isinstance(r, dict) and (address := _text(r.get("Email"))))


def _attachment(item: dict[str, Any]) -> Attachment:
    size = item.get("ContentLength")
    return Attachment(filename=_text(item.get("Name")), content_type=_text(item.get("ContentType")),
                      size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                      provider_id=_text(item.get("ContentID")))


@refusing
def parse(request: WebhookRequest) -> Delivery:
    data = expect_dict(json_body(request), "body")
    from_full: dict[str, Any] = data["FromFull"] if isinstance(data.get("FromFull"), dict) else {}
    sender_email = _text(from_full.get("Email")) or email.address(_text(data.get("From")))[1]
    if not sender_email:
        raise PayloadError("missing sender ('FromFull.Email' or 'From')")
    postmark_id = _text(data.get("MessageID"))
    if postmark_id is None:
        raise PayloadError("missing field 'MessageID' (a string)")
    listed = data.get("Headers")
    raw_headers = [
        (str(h.get("Name", "")), str(h.get("Value", "")))
        for h in (listed if isinstance(listed, list) else []) if isinstance(h, dict)
    ]
    headers = email.kept_headers(raw_headers)
    rfc_id = email.rfc_id(email.header(raw_headers, "message-id"))
    listed = data.get("Attachments")
    attachments, omitted = email.capped_attachments(
        [_attachment(a) for a in (listed if isinstance(listed, list) else []) if isinstance(a, dict)])
    sent_at = email.header_date(_text(data.get("Date"))) or request.received_at
    message = InboundMessage(
        channel=CHANNEL,
        external_id=postmark_id,
        sent_at=sent_at,
        kind="email",
        sender_name=_text(from_full.get("Name")),
        identities=(Identity(kind="email", value=sender_email),),
        recipients=_recipients(data.get("ToFull")) + _recipients(data.get("CcFull")),
        text=_text(data.get("TextBody")) or "",
        html=_text(data.get("HtmlBody")),
        subject=_text(data.get("Subject")),
        stripped_reply=_text(data.get("StrippedTextReply")),
        rfc_message_id=rfc_id,
        in_reply_to=next(iter(email.thread_ids(email.header(raw_headers, "in-reply-to"))), None),
        references=email.thread_ids(email.header(raw_headers, "references")),
        attachments=attachments,
        headers=headers,
        metadata={"postmark_message_id": postmark_id, "mailbox_hash": _text(data.get("MailboxHash")), **omitted},
    )
    return Delivery(dedupe_key=postmark_id, messages=(message,))
