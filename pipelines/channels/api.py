"""The `api` channel: signed JSON from any system (web chat widgets, CRMs, custom back ends).

Authenticity follows Standard Webhooks: `webhook-signature` holds space-separated `v1,<base64 sig>`
entries, each an HMAC-SHA256 under the base64 key inside `whsec_...` over `id.timestamp.body`; any one
matching entry is enough (secret rotation), and timestamps more than the tolerance away are refused.

The body is one message, one status update, or {"items": [...]} with several; see the README.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

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
    json_body,
    refusing,
)

CHANNEL = "api"
MAX_BATCH = 500  # items in one delivery
MAX_ATTACHMENTS = 50  # per message (the models allow base.MAX_ATTACHMENTS from any channel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


def _email(value: str) -> str:
    from pipelines.normalize import valid_email  # cached: the same senders write again and again

    normalized = valid_email(value)
    if normalized is None:
        raise ValueError("value is not a valid email address")
    return normalized


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]


class ApiContact(_Strict):
    name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    phone: str | None = Field(default=None, max_length=64)
    external_id: str | None = None  # a long one is hashed (see base.Identity), never refused
    locale: str | None = Field(default=None, max_length=35)  # a BCP 47 tag ("fi", "en-GB"): a language hint

    @model_validator(mode="after")
    def _one_handle(self) -> ApiContact:
        if not (self.email or self.phone or self.external_id):
            raise ValueError("contact needs at least one of email, phone or external_id")
        return self


class ApiAttachment(_Strict):
    url: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int | None = Field(default=None, ge=0)


class ApiMessage(_Strict):
    type: Literal["message"] = "message"
    id: str = Field(min_length=1)  # long or unprintable ids are hashed (base.stable_key), never refused
    sent_at: datetime
    text: str = Field(default="", max_length=100_000)
    html: str | None = None
    subject: str | None = Field(default=None, max_length=998)
    contact: ApiContact
    in_reply_to: str | None = None
    attachments: list[ApiAttachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aware(self) -> ApiMessage:
        if self.sent_at.tzinfo is None:
            raise ValueError("sent_at needs a time zone (RFC 3339)")
        if not (self.text or self.html or self.attachments):
            raise ValueError("a message needs text, html or attachments")
        return self


class ApiStatus(_Strict):
    type: Literal["status"]
    message_id: str = Field(min_length=1)
    status: Literal["queued", "sent", "delivered", "read", "failed"]
    at: datetime
    error: str | None = Field(default=None, max_length=2000)


Item = Annotated[ApiMessage | ApiStatus, Field(discriminator="type")]
_ITEMS = TypeAdapter(list[Item])


def signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    msg_id = request.header("webhook-id") or ""
    timestamp = request.header("webhook-timestamp") or ""
    given = (request.header("webhook-signature") or "").split()
    try:
        expected = signature(secrets["signing_secret"], msg_id, timestamp, request.body)
    except (binascii.Error, ValueError):
        raise SignatureError("signature verification failed") from None
    matched = False
    for candidate in given:
        matched |= constant_time_equal(candidate, expected)
    try:
        fresh = abs(context.now.timestamp() - int(timestamp)) <= context.tolerance_seconds
    except ValueError:
        fresh = False
    if not (matched and fresh and msg_id):
        raise SignatureError("signature verification failed")


def _message(item: ApiMessage) -> InboundMessage:
    identities = []
    if item.contact.email:
        identities.append(Identity(kind="email", value=str(item.contact.email)))
    if item.contact.phone:
        identities.append(Identity(kind="phone", value=item.contact.phone))
    if item.contact.external_id:
        identities.append(Identity(kind="external", value=item.contact.external_id))
    return InboundMessage(
        channel=CHANNEL, external_id=item.id, sent_at=item.sent_at, kind="text",
        sender_name=item.contact.name, identities=tuple(identities), text=item.text, html=item.html,
        subject=item.subject, in_reply_to=item.in_reply_to,
        attachments=tuple(Attachment(**a.model_dump()) for a in item.attachments),
        metadata={**item.metadata, "language_hint": item.contact.locale} if item.contact.locale else item.metadata,
    )


@refusing
def parse(request: WebhookRequest) -> Delivery:
    data = json_body(request)
    raw_items = data.get("items") if isinstance(data, dict) and "items" in data else [data]
    if not isinstance(raw_items, list) or not raw_items or len(raw_items) > MAX_BATCH:
        raise PayloadError(f"'items' must be a list of 1 to {MAX_BATCH} messages or status updates")
    try:
        items = _ITEMS.validate_python(raw_items)
    except ValidationError as exc:
        first_error = exc.errors()[0]
        where = ".".join(str(p) for p in first_error["loc"])
        raise PayloadError(f"{where}: {first_error['msg']}") from None
    messages = tuple(_message(i) for i in items if isinstance(i, ApiMessage))
    statuses = tuple(
        StatusUpdate(channel=CHANNEL, external_id=i.message_id, status=i.status, at=i.at, error=i.error)
        for i in items if isinstance(i, ApiStatus)
    )
    dedupe = request.header("webhook-id") or ""
    if not dedupe:
        raise PayloadError("missing webhook-id header")
    return Delivery(dedupe_key=dedupe, messages=messages, statuses=statuses)
