"""What every channel adapter shares: the request it sees, the models it produces, the errors it raises.

An adapter is a module with two functions:

    verify(request, secrets, context) -> None     # raises SignatureError
    parse(request) -> Delivery                     # raises PayloadError

`verify` runs on the raw bytes exactly as received; `parse` turns them into provider-neutral models.
Neither touches the network or the database, so both run in the ingress (to refuse bad deliveries before
acknowledging) and again in the workers (stored raw events are the source of truth).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field


class ChannelError(Exception):
    """A delivery a channel adapter refuses."""


class SignatureError(ChannelError):
    """The delivery's authenticity could not be established (missing, wrong or replayed credentials)."""


class PayloadError(ChannelError):
    """The delivery is authentic but its body is not a payload this channel documents."""


IdentityKind = Literal["phone", "email", "telegram", "external"]
MessageKind = Literal[
    "text", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive",
    "reaction", "email", "unknown",
]
DeliveryStatus = Literal["queued", "sent", "delivered", "read", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Identity(_Model):
    """A raw handle for a person as the provider gave it; the workers normalize it."""

    kind: IdentityKind
    value: str = Field(min_length=1, max_length=512)


class Attachment(_Model):
    filename: str | None = None
    content_type: str | None = None
    size: int | None = None
    url: str | None = None
    provider_id: str | None = None


class InboundMessage(_Model):
    """One message a person sent us, on any channel."""

    channel: str
    external_id: str = Field(min_length=1, max_length=998)
    sent_at: datetime
    kind: MessageKind = "text"
    sender_name: str | None = None
    identities: tuple[Identity, ...] = Field(min_length=1)
    recipients: tuple[str, ...] = ()
    text: str = ""
    html: str | None = None
    subject: str | None = None
    stripped_reply: str | None = None
    rfc_message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    headers: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    edited: bool = False


class StatusUpdate(_Model):
    """A provider's report on a message we sent: it only ever moves forward."""

    channel: str
    external_id: str = Field(min_length=1, max_length=998)
    status: DeliveryStatus
    at: datetime
    error: str | None = None


class Delivery(_Model):
    """Everything one webhook POST carried, and the key that recognises the provider's retries."""

    dedupe_key: str = Field(min_length=1, max_length=512)
    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()


@dataclass(frozen=True)
class WebhookRequest:
    """The parts of an HTTP request an adapter may look at."""

    method: str
    url: str  # the URL as the provider requested it, reconstructed by the ingress
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    alternate_urls: tuple[str, ...] = ()  # the same URL with or without the default port
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class VerifyContext:
    """What verification needs beyond the request: the clock and the accepted clock skew."""

    now: datetime
    tolerance_seconds: int = 300


class Adapter(Protocol):
    def verify(self, request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None: ...

    def parse(self, request: WebhookRequest) -> Delivery: ...


# -- helpers the adapters share -------------------------------------------------------------------
def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    a_bytes = a.encode() if isinstance(a, str) else a
    b_bytes = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def body_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def batch_key(keys: list[str], body: bytes) -> str:
    """A delivery's dedupe key: its one provider id, a digest of several, or of the body when none."""
    if len(keys) == 1 and len(keys[0]) <= 400:
        return keys[0]
    if keys:
        return "batch:" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return body_digest(body)


def from_unix(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise PayloadError(f"not a Unix timestamp: {value!r}") from None


def form_fields(request: WebhookRequest) -> dict[str, list[str]]:
    """URL-encoded or multipart form fields (file parts excluded), each name mapped to its values."""
    result: dict[str, list[str]] = {}
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded":
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("form body is not UTF-8") from None
        for key, value in parse_qsl(text, keep_blank_values=True):
            result.setdefault(key, []).append(value)
        return result
    if ctype == "multipart/form-data":
        for name, part in multipart_parts(request):
            if part.get_filename() is None:
                payload = part.get_payload(decode=True)
                raw = payload if isinstance(payload, bytes) else b""
                charset = part.get_content_charset() or "utf-8"
                result.setdefault(name, []).append(raw.decode(charset, errors="replace"))
        return result
    raise PayloadError(f"expected a form post, got content type {ctype or 'none'!r}")


def multipart_parts(request: WebhookRequest) -> list[tuple[str, Message]]:
    header = request.headers.get("content-type", "")
    if "boundary=" not in header:
        raise PayloadError("multipart body without a boundary")
    try:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + header.encode("latin-1") + b"\r\n\r\n" + request.body
        )
    except (UnicodeEncodeError, ValueError, TypeError):
        raise PayloadError("malformed multipart body") from None
    if not message.is_multipart():
        raise PayloadError("malformed multipart body")
    parts: list[tuple[str, Message]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts.append((name, part))
    if not parts:
        raise PayloadError("multipart body has no form fields")
    return parts


def first(fields: Mapping[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def require(fields: Mapping[str, list[str]], name: str) -> str:
    value = first(fields, name)
    if not value:
        raise PayloadError(f"missing field {name!r}")
    return value


def json_body(request: WebhookRequest) -> Any:
    import orjson

    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise PayloadError("body is not valid JSON") from None


def expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be a JSON object")
    return value


def verify_basic_auth(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    """`verify` for providers that authenticate with HTTP Basic credentials in the webhook URL."""
    if not basic_auth_matches(request, secrets["basic_user"], secrets["basic_password"]):
        raise SignatureError("signature verification failed")


def basic_auth_matches(request: WebhookRequest, user: str, password: str) -> bool:
    """HTTP Basic credentials, compared in constant time (both parts always compared)."""
    import base64
    import binascii

    header = request.header("authorization") or ""
    scheme, _, encoded = header.partition(" ")
    given_user, given_password = "", ""
    if scheme.lower() == "basic":
        try:
            given_user, _, given_password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            pass
    user_ok = constant_time_equal(given_user, user)
    password_ok = constant_time_equal(given_password, password)
    return user_ok and password_ok
