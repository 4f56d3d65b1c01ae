"""What every channel adapter shares: the request it sees, the models it produces, the errors it raises.

An adapter is a module with two functions, and a third for a provider that sends one-time tokens:

    verify(request, secrets, context) -> None     # raises SignatureError
    parse(request) -> Delivery                     # raises PayloadError
    replay_token(request) -> str | None            # Mailgun's token, claimed once by the ingress

The registry (`pipelines.channels.ADAPTERS`) holds each module's functions as an `Adapter`.

`verify` runs on the raw bytes exactly as received; `parse` turns them into provider-neutral models.
Neither touches the network or the database, so both run in the ingress (to refuse bad deliveries before
acknowledging) and again in the workers (stored raw events are the source of truth).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from pipelines.errors import Refusal


class ChannelError(Refusal):
    """A delivery a channel adapter refuses: the same delivery is refused on every attempt."""


class SignatureError(ChannelError):
    """The delivery's authenticity could not be established (missing, wrong or replayed credentials)."""

    status, code = 401, "invalid_signature"


class PayloadError(ChannelError):
    """The delivery is authentic but its body is not a payload this channel documents."""

    status, code = 400, "malformed_payload"


IdentityKind = Literal["phone", "email", "telegram", "external"]
MessageKind = Literal[
    "text", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive",
    "reaction", "email", "unknown",
]
DeliveryStatus = Literal["queued", "sent", "delivered", "read", "failed"]

# -- what a delivery may carry into PostgreSQL ------------------------------------------------------
# PostgreSQL's text and jsonb refuse NUL and lone surrogates (not UTF-8), orjson in the workers refuses
# huge integers and more than 255 levels, and a btree entry holds at most 2,704 bytes. So text is cleaned,
# ids are hashed rather than refused (a provider's retry still meets its first copy), and structure beyond
# these bounds is refused (PayloadError, a 400 before the 2xx).
MAX_KEY_CHARS = 512  # dedupe keys, external and RFC message ids, identity values: longer ones are hashed
MAX_DEPTH = 32  # levels of containers in one field (metadata, headers), the field's own counting as one
MAX_ITEMS = 1_000  # values in one field, counted through every level (messages per delivery, metadata)
MAX_METADATA_BYTES = 16 * 1024  # a message's metadata, serialized as JSON
MAX_ATTACHMENTS = 100  # per message
MAX_FORM_PARTS = 1_000  # parts of a multipart form post (fields and files)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_SURROGATES = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with what PostgreSQL text cannot hold (NUL, lone surrogates) replaced by U+FFFD.

    Most text is ASCII without NUL: two C-speed checks and no copy. Surrogates, as `surrogateescape`
    decoding leaves them, only exist in non-ASCII text, which the UTF-8 encoder tells about.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not (text.isascii() or _utf8_encodable(text)):
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def digest_key(value: str) -> str:
    """The stable stand-in for an id too long for an index or not printable: "sha256:" + hex."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def stable_key(value: str) -> str:
    """`value` itself when short and printable, else its digest: the same input always gives one key."""
    if len(value) <= MAX_KEY_CHARS and value.isprintable():
        return value
    return digest_key(value)


def _text(value: Any) -> Any:
    return storable(value) if isinstance(value, str) else value  # other types: pydantic says what is wrong


def _key(value: Any) -> Any:
    return stable_key(value) if isinstance(value, str) else value


def _handle(value: Any) -> Any:
    """An identity value: over the limit it is hashed (one sender, one contact); otherwise made storable."""
    if not isinstance(value, str):
        return value
    return digest_key(value) if len(value) > MAX_KEY_CHARS else storable(value)


def storable_tree(root: Any) -> Any:
    """A copy of a JSON-like value with every string (dict keys too) made storable; lists for tuples.

    Iterative, so depth costs no stack; raises PayloadError past MAX_DEPTH levels or MAX_ITEMS values, on
    an integer outside 64 bits or a key that is not a string: JSON storage could not take them.
    """
    if type(root) is dict and _flat_and_storable(root):
        return root  # the common case (a few strings and numbers): checked in one pass, nothing copied
    stack: list[tuple[Any, Any, int]] = []
    copy = _member(root, stack, 0)
    count = 0
    while stack:
        source, target, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PayloadError(f"nested more than {MAX_DEPTH} levels deep")
        count += len(source)
        if count > MAX_ITEMS:
            raise PayloadError(f"more than {MAX_ITEMS} values")
        if isinstance(target, dict):
            for key, member in source.items():
                if not isinstance(key, str):
                    raise PayloadError("object keys must be strings")
                target[storable(key)] = _member(member, stack, depth)
        else:
            for member in source:
                target.append(_member(member, stack, depth))
    return copy


_FLAT_SCALARS = (float, bool, type(None))


def _flat_and_storable(value: dict[Any, Any]) -> bool:
    """True for a dict of string keys and scalar values whose strings are already storable."""
    if len(value) > MAX_ITEMS:
        return False
    texts: list[str] = []
    for key, member in value.items():
        if type(key) is not str:
            return False
        texts.append(key)
        kind = type(member)
        if kind is str:
            texts.append(member)
        elif kind is int:
            if not INT64_MIN <= member <= INT64_MAX:
                return False
        elif kind not in _FLAT_SCALARS:
            return False
    joined = "".join(texts)
    return "\x00" not in joined and (joined.isascii() or _utf8_encodable(joined))


def _member(value: Any, stack: list[tuple[Any, Any, int]], depth: int) -> Any:
    """A storable scalar, or an empty copy of a container that `stack` will fill, one level deeper."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict | list | tuple):
        copy: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
        stack.append((value, copy, depth + 1))
        return copy
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise PayloadError("an integer outside the signed 64-bit range")
    return value


def _bounded_int(value: Any) -> Any:
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise PayloadError("an integer outside the signed 64-bit range")
    return value


def _headers(value: Any) -> Any:
    try:
        return storable_tree(value)
    except PayloadError as exc:
        raise PayloadError(f"headers: {exc}") from None


def _metadata(value: Any) -> Any:
    """Metadata made storable and bounded: MAX_DEPTH levels, MAX_ITEMS values, MAX_METADATA_BYTES as JSON."""
    try:
        value = storable_tree(value)
        size = len(orjson.dumps(value, default=str)) if value else 0
    except PayloadError as exc:
        raise PayloadError(f"metadata: {exc}") from None
    except orjson.JSONEncodeError:
        raise PayloadError("metadata: cannot be stored as JSON") from None
    if size > MAX_METADATA_BYTES:
        raise PayloadError(f"metadata: over {MAX_METADATA_BYTES} bytes as JSON")
    return value


def _at_most(limit: int, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) > limit:
            raise PayloadError(f"more than {limit} {what}")
        return value

    return check


# Every string field of the models below is one of these, so whichever channel builds a model, what it
# holds can be stored: free text made storable, ids kept short and printable, structure bounded.
# (Field constraints come first: so pydantic checks them in its core, after the cleaning, at no cost.)
Text = Annotated[str, BeforeValidator(_text)]
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS), BeforeValidator(_key)]
HandleValue = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS), BeforeValidator(_handle)]
Headers = Annotated[dict[str, str], BeforeValidator(_headers)]
Metadata = Annotated[dict[str, Any], BeforeValidator(_metadata)]
Size = Annotated[int, BeforeValidator(_bounded_int)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def refusing(parse: Callable[[WebhookRequest], Delivery]) -> Callable[[WebhookRequest], Delivery]:
    """An adapter's `parse` that refuses what the shared models cannot hold with a PayloadError (400 at the
    door), never with pydantic's own ValidationError: the adapter need not guard every field's type and
    length itself. One wrapper per delivery, not one per model built."""

    @functools.wraps(parse)
    def checked(request: WebhookRequest) -> Delivery:
        try:
            return parse(request)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or exc.title
            raise PayloadError(f"{exc.title}.{where}: {first['msg']}") from None

    return checked


class Identity(_Model):
    """A raw handle for a person as the provider gave it; the workers normalize it.

    A value longer than MAX_KEY_CHARS becomes its digest: no real handle is that long, and the same
    sender still resolves to one contact.
    """

    kind: IdentityKind
    value: HandleValue


class Attachment(_Model):
    filename: Text | None = None
    content_type: Text | None = None
    size: Size | None = None
    url: Text | None = None
    provider_id: Text | None = None


class InboundMessage(_Model):
    """One message a person sent us, on any channel."""

    channel: str  # the adapter's own name
    external_id: Key
    sent_at: datetime
    kind: MessageKind = "text"
    sender_name: Text | None = None
    identities: tuple[Identity, ...] = Field(min_length=1)
    recipients: tuple[Text, ...] = ()
    text: Text = ""
    html: Text | None = None
    subject: Text | None = None
    stripped_reply: Text | None = None
    rfc_message_id: Key | None = None
    in_reply_to: Key | None = None
    references: tuple[Key, ...] = ()
    attachments: Annotated[tuple[Attachment, ...], BeforeValidator(_at_most(MAX_ATTACHMENTS, "attachments"))] = ()
    headers: Headers = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=dict)
    edited: bool = False


class StatusUpdate(_Model):
    """A provider's report on a message we sent: it only ever moves forward."""

    channel: str  # the adapter's own name
    external_id: Key
    status: DeliveryStatus
    at: datetime
    error: Text | None = None


class Delivery(_Model):
    """Everything one webhook POST carried, and the key that recognises the provider's retries."""

    dedupe_key: Key
    messages: Annotated[tuple[InboundMessage, ...], BeforeValidator(_at_most(MAX_ITEMS, "messages"))] = ()
    statuses: Annotated[tuple[StatusUpdate, ...], BeforeValidator(_at_most(MAX_ITEMS, "status updates"))] = ()


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

    @functools.cached_property
    def form(self) -> dict[str, list[str]]:
        """`form_fields` of this request, parsed once: Twilio's `verify` and `parse` both read every field."""
        return form_fields(self)


@dataclass(frozen=True)
class VerifyContext:
    """What verification needs beyond the request: the clock and the accepted clock skew."""

    now: datetime
    tolerance_seconds: int = 300


@dataclass(frozen=True, slots=True)
class Adapter:
    """One channel's functions, as the registry holds them: built from the channel's module, so mypy checks
    that every module's `verify` and `parse` have the shapes this module's docstring gives. `replay_token` is
    None for a channel whose provider sends no one-time token; for Mailgun it returns the token the ingress
    must claim once. Plain attributes: calling through an Adapter costs what calling through the module did."""

    verify: Callable[[WebhookRequest, Mapping[str, str], VerifyContext], None]
    parse: Callable[[WebhookRequest], Delivery]
    replay_token: Callable[[WebhookRequest], str | None] | None = None


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
    holder = Message()
    holder["content-type"] = header
    boundary = holder.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise PayloadError("multipart body without a boundary")
    # The stdlib parser spends about half a millisecond per part: count the delimiters first (one linear
    # scan in C), so a body of many tiny parts is refused before it costs seconds.
    if request.body.count(b"--" + boundary.encode("latin-1", errors="replace")) > MAX_FORM_PARTS + 1:
        raise PayloadError(f"multipart body with more than {MAX_FORM_PARTS} parts")
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
