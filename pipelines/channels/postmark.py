"""Postmark inbound email: JSON posts, authenticated with HTTP Basic credentials in the webhook URL."""

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
    verify_basic_auth,
)

CHANNEL = "postmark"


verify = verify_basic_auth


def _recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(r.get("Email")) for r in value if isinstance(r, dict) and r.get("Email"))


def parse(request: WebhookRequest) -> Delivery:
    data = expect_dict(json_body(request), "body")
    from_full: dict[str, Any] = data["FromFull"] if isinstance(data.get("FromFull"), dict) else {}
    sender_email = from_full.get("Email") or email.address(data.get("From"))[1]
    if not sender_email:
        raise PayloadError("missing sender ('FromFull.Email' or 'From')")
    postmark_id = str(data.get("MessageID") or "")
    if not postmark_id:
        raise PayloadError("missing field 'MessageID'")
    raw_headers = [
        (str(h.get("Name", "")), str(h.get("Value", "")))
        for h in data.get("Headers") or [] if isinstance(h, dict)
    ]
    headers = email.kept_headers(raw_headers)
    rfc_id = email.first_id(headers.get("message-id") or data.get("MessageID"))
    attachments = tuple(
        Attachment(filename=a.get("Name"), content_type=a.get("ContentType"), size=a.get("ContentLength"),
                   provider_id=a.get("ContentID") or None)
        for a in data.get("Attachments") or [] if isinstance(a, dict)
    )
    sent_at = email.header_date(data.get("Date")) or request.received_at
    message = InboundMessage(
        channel=CHANNEL,
        external_id=rfc_id or postmark_id,
        sent_at=sent_at,
        kind="email",
        sender_name=from_full.get("Name") or None,
        identities=(Identity(kind="email", value=str(sender_email)),),
        recipients=_recipients(data.get("ToFull")) + _recipients(data.get("CcFull")),
        text=str(data.get("TextBody") or ""),
        html=data.get("HtmlBody") or None,
        subject=data.get("Subject") or None,
        stripped_reply=data.get("StrippedTextReply") or None,
        rfc_message_id=rfc_id,
        in_reply_to=email.first_id(headers.get("in-reply-to")),
        references=email.message_ids(headers.get("references")),
        attachments=attachments,
        headers=headers,
        metadata={"postmark_message_id": postmark_id, "mailbox_hash": data.get("MailboxHash") or None},
    )
    return Delivery(dedupe_key=postmark_id, messages=(message,))
