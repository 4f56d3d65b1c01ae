"""Pieces shared by the inbound-email providers: addresses, RFC 5322 ids, the headers worth keeping, and
text decoded in the charset the provider or the MIME part names.

Providers hand over email in more than one shape (SendGrid's fields each in the email's own charset, raw
MIME from Mailgun and SendGrid, Postmark's and Mailgun's UTF-8), so decoding lives here, once: bytes are
read in the charset named for them, RFC 2047 encoded words in theirs, and an unknown label never fails.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from itertools import islice
from urllib.parse import parse_qsl

from pipelines.channels.base import (
    MAX_ATTACHMENTS,
    MAX_FORM_PARTS,
    Attachment,
    PayloadError,
    WebhookRequest,
    multipart_parts,
    stable_key,
)

# Headers kept with a message: threading, the marks of auto-replies and bulk mail, the language.
KEPT_HEADERS = (
    "message-id", "in-reply-to", "references", "auto-submitted", "precedence", "x-autoreply",
    "x-autorespond", "x-auto-response-suppress", "list-id", "list-unsubscribe", "return-path", "date",
    "content-language",  # the sender's language: evidence when the text is too short to tell
)
_MSGID = re.compile(r"<([^<>\s]+)>")
# Bounds on what header parsing reads, so that no header costs more than milliseconds whatever its shape:
# the standard library's address parser is slow per character and recurses once per nested group or
# comment, and a sender chooses how many headers, folds and encoded words to send.
MAX_HEADER_BLOCK = 256 * 1024  # bytes of a raw header block that are parsed; the rest is ignored
MAX_HEADERS = 1_000  # headers of one block that are kept
MAX_HEADER_VALUE = 16 * 1024  # characters of one header value that are unfolded and decoded
MAX_ADDRESS_CHARS = 16 * 1024  # characters of an address header that are split into addresses


def address(raw: str | None) -> tuple[str | None, str | None]:
    """("Name", "email") from 'Name <email>' or a bare address."""
    if not raw:
        return None, None
    pairs = _address_pairs(raw)
    if not pairs:
        return None, None
    name, email = pairs[0]
    return (decode_words(name).strip() or None), (email.strip() or None)


def addresses(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(email for _, email in _address_pairs(raw) if email)


def _address_pairs(raw: str) -> list[tuple[str, str]]:
    """(name, address) pairs of the header's first MAX_ADDRESS_CHARS characters."""
    try:
        return getaddresses([raw[:MAX_ADDRESS_CHARS]])
    except RecursionError:  # groups or comments nested thousands deep: no address a person would write
        return []


def message_ids(raw: str | None) -> tuple[str, ...]:
    """The ids in a Message-ID, In-Reply-To or References header, without angle brackets."""
    if not raw:
        return ()
    found = _MSGID.findall(raw)
    if found:
        return tuple(found)
    return tuple(part for part in raw.split() if "@" in part)


def first_id(raw: str | None) -> str | None:
    ids = message_ids(raw)
    return ids[0] if ids else None


def kept_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in pairs:
        key = name.strip().lower()
        if key in KEPT_HEADERS and key not in kept:
            kept[key] = decode_words(str(value)[:MAX_HEADER_VALUE].strip())[:2000]
    return kept


def header_date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else None


# -- charsets ----------------------------------------------------------------------------------------
# Mail labelled Latin-1 or ASCII is very often Windows-1252 (curly quotes and the euro sign in 0x80-0x9F),
# so those labels decode as Windows-1252, as browsers do (WHATWG Encoding Standard); its five unassigned
# bytes keep their Latin-1 meaning, so the table decodes every byte.
_WINDOWS_1252 = "".join(bytes([b]).decode("cp1252", "replace").replace("\ufffd", chr(b)) for b in range(256))
_AS_WINDOWS_1252 = frozenset({"ascii", "iso8859-1", "cp1252"})
# Codecs Python knows that are no charset of mail text: they interpret escapes or rewrite the text.
_NOT_MAIL_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode", "utf-7"})
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")


def codec(label: str | None) -> str | None:
    """The Python codec for a MIME charset label; None for a missing, unknown or bogus label."""
    label = (label or "").strip().strip('"').strip()
    if not _LABEL.fullmatch(label):
        return None
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return None if name in _NOT_MAIL_CHARSETS else name


def decode_bytes(data: bytes, label: str | None = None) -> str:
    """Text from bytes in the charset a provider or a MIME part names.

    A known label decodes with replacement characters for the bytes it cannot read. UTF-8, a missing label
    and an unknown one read the bytes as UTF-8 when they are UTF-8; when they are not and hold no valid
    multi-byte UTF-8 sequence at all, they are plainly an 8-bit charset and read as Windows-1252 (the
    commonest by far; every Latin-1 letter decodes the same); when valid sequences and invalid bytes mix,
    the text is UTF-8 damaged in transit and keeps replacement characters where it is damaged.
    """
    name = codec(label)
    if name in _AS_WINDOWS_1252:
        return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0]
    if name is not None and name != "utf-8":
        try:
            return data.decode(name, "replace")
        except (UnicodeError, LookupError, TypeError):  # a codec that does not take "replace"
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        lenient = data.decode("utf-8", "replace")
    if not lenient.replace("\ufffd", "").isascii():  # some valid multi-byte sequence: damaged UTF-8
        return lenient
    return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0]


# An RFC 2047 encoded word: =?charset[*language]?B|Q?text?=
_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,40})(?:\*[^?\s]*)?\?([BbQq])\?([^?\s]*)\?=")


def decode_words(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded, each in its own charset.

    White space between adjacent encoded words is dropped, and adjacent words in one charset are decoded
    together (senders split multi-byte characters across words). One pass: linear in the value.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()  # the bytes of adjacent words in one charset, decoded together
    pending_charset = ""
    after_word = False
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[position:match.start()]
        charset = match.group(1).lower()
        joined = after_word and not between.strip()
        if pending and not (joined and charset == pending_charset):
            out.append(decode_bytes(bytes(pending), pending_charset))
            pending.clear()
        if not joined:
            out.append(between)
        pending += _word_bytes(match.group(2).upper(), match.group(3))
        pending_charset, after_word, position = charset, True, match.end()
    if pending:
        out.append(decode_bytes(bytes(pending), pending_charset))
    out.append(value[position:])
    return "".join(out)


def _word_bytes(encoding: str, text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    try:
        if encoding == "B":
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        return binascii.a2b_qp(raw, header=True)
    except (binascii.Error, ValueError):
        return raw


# -- raw header blocks and MIME messages ------------------------------------------------------------------
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def header_pairs(raw: bytes, label: str | None = None) -> list[tuple[str, str]]:
    """Name/value pairs of a raw RFC 5322 header block, unfolded, 8-bit bytes read in `label` (UTF-8 per
    RFC 6532 when none). Encoded words stay: addresses are split first, then their names decoded.
    Only the first MAX_HEADER_BLOCK bytes are parsed."""
    parsed = BytesParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BLOCK], headersonly=True)
    return _decoded_items(parsed, label)


def _decoded_items(message: Message, label: str | None = None) -> list[tuple[str, str]]:
    """The first MAX_HEADERS headers, each value's first MAX_HEADER_VALUE characters unfolded and decoded."""
    pairs = []
    for name, value in islice(message.raw_items(), MAX_HEADERS):
        data = _FOLD.sub("", str(value)[:MAX_HEADER_VALUE]).encode("ascii", "surrogateescape")
        pairs.append((str(name), decode_bytes(data, label).strip()))
    return pairs


def header(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of the header `name`, whole (kept headers are truncated)."""
    wanted = name.lower()
    return next((value for key, value in pairs if key.strip().lower() == wanted), None)


@dataclass(frozen=True)
class MimeEmail:
    """A whole MIME message as its parts: headers, the plain and HTML bodies, the attachments."""

    headers: list[tuple[str, str]]
    text: str
    html: str | None
    attachments: tuple[Attachment, ...]


def parse_mime(raw: bytes) -> MimeEmail:
    """Mailgun's `body-mime` and SendGrid's raw mode: each text part decoded in its own charset.

    The body is the part Python's `email` package chooses (`EmailMessage.get_body(('plain', 'html'))`), so a
    text part that carries a file name but is not `Content-Disposition: attachment` is the body, as mailers
    that name every part mean it; the HTML body is the one `get_body(('html',))` chooses. Every other leaf
    part is an attachment.
    """
    # Every part opens with a line starting "--": count those first (one scan in C), so a message of many
    # tiny parts is refused before the stdlib parser spends half a millisecond on each.
    if raw.count(b"\n--") > 2 * MAX_FORM_PARTS:
        raise PayloadError(f"MIME message with more than {MAX_FORM_PARTS} parts")
    try:
        message = BytesParser(policy=compat32).parsebytes(raw)
        plain, html = body_parts(message)
        attachments: list[Attachment] = []
        for part in _leaves(message):
            if part is plain or part is html or part.get_content_maintype() == "multipart":
                continue  # a body, or a container whose parts the parser could not find (no boundary)
            payload = part.get_payload(decode=True)
            attachments.append(Attachment(
                filename=decode_words(part.get_filename() or "") or None, content_type=part.get_content_type(),
                size=len(payload) if isinstance(payload, bytes) else None))
        return MimeEmail(_decoded_items(message), _part_text(plain) if plain is not None else "",
                         _part_text(html) if html is not None else None, tuple(attachments))
    except PayloadError:
        raise
    except Exception:  # the stdlib parser raises many types on hostile MIME
        raise PayloadError("malformed MIME message") from None


def body_parts(message: Message) -> tuple[Message | None, Message | None]:
    """The parts `get_body` chooses: (the first text/plain body, the first text/html body), either None.

    `EmailMessage.get_body` walks the tree depth first: it skips parts whose disposition is `attachment`,
    takes text parts of the wanted subtypes, enters multiparts (of a multipart/related only its root: the
    part named by `start`, else the first) and nothing else (a forwarded message/rfc822 is not the body).
    Asked for ('plain', 'html') it returns the first plain candidate, else the first HTML one; asked for
    ('html',), the first HTML one. The same walk here is a loop over a stack, not recursion, so a deeply
    nested message costs no stack, and it works on the compat32 tree the rest of this module reads (whose
    headers are parsed lazily and boundedly); a test compares it with `get_body` under `policy.default`.
    """
    plain: Message | None = None
    html: Message | None = None
    stack = [message]
    while stack and (plain is None or html is None):
        part = stack.pop()
        if part.get_content_disposition() == "attachment":
            continue
        maintype, subtype = part.get_content_type().split("/")
        if maintype == "text":
            if subtype == "plain" and plain is None:
                plain = part
            elif subtype == "html" and html is None:
                html = part
            continue
        payload = part.get_payload()
        if maintype != "multipart" or not isinstance(payload, list) or not message.is_multipart():
            continue
        children = [p for p in payload if isinstance(p, Message)]
        if subtype == "related":
            start = part.get_param("start")
            root = next((p for p in children if start and p["content-id"] == start), None)
            children = [root] if root is not None else children[:1]
        stack.extend(reversed(children))
    return plain, html


def capped_attachments(attachments: Sequence[Attachment]) -> tuple[tuple[Attachment, ...], dict[str, int]]:
    """The first MAX_ATTACHMENTS of an email's attachments, and metadata saying how many more it carried.

    An authentic email is never refused for carrying many files: its text is what Intake stores, and the
    attachments are only described."""
    if len(attachments) <= MAX_ATTACHMENTS:
        return tuple(attachments), {}
    return tuple(attachments[:MAX_ATTACHMENTS]), {"attachments_omitted": len(attachments) - MAX_ATTACHMENTS}


def _leaves(message: Message) -> list[Message]:
    """The non-multipart parts in order, without recursion (a forwarded message is one leaf)."""
    leaves: list[Message] = []
    stack = [message]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if part.is_multipart() and part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        else:
            leaves.append(part)
    return leaves


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_param("charset")
    return decode_bytes(data, charset if isinstance(charset, str) else None)


# -- form posts, read as bytes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FormPart:
    """One field of a form post as received: its bytes and, for multipart, its own charset and filename."""

    name: str
    data: bytes
    charset: str | None = None
    filename: str | None = None
    content_type: str | None = None


def form_parts(request: WebhookRequest) -> list[FormPart]:
    """Every field of a URL-encoded or multipart form, undecoded, so each can be read in its own charset."""
    if request.content_type == "application/x-www-form-urlencoded":
        try:  # the body itself is ASCII in practice; what it escapes may be any bytes
            request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("form body is not UTF-8") from None
        # Latin-1 maps each byte to one character and back, so percent-escapes keep their bytes.
        pairs = parse_qsl(request.body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        return [FormPart(name.encode("latin-1").decode("utf-8", "replace"), value.encode("latin-1"))
                for name, value in pairs]
    if request.content_type != "multipart/form-data":
        raise PayloadError(f"expected a form post, got content type {request.content_type or 'none'!r}")
    parts = []
    for name, part in multipart_parts(request):
        payload = part.get_payload(decode=True)
        charset = part.get_param("charset")
        filename = part.get_filename()
        parts.append(FormPart(name, payload if isinstance(payload, bytes) else b"",
                              charset if isinstance(charset, str) else None, filename,
                              part.get_content_type() if filename is not None else None))
    return parts


def text_fields(parts: Iterable[FormPart], charsets: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """The non-file fields, each decoded in the charset its part names, else the one `charsets` names for
    it (SendGrid's `charsets` field), else UTF-8 (with the fallback of `decode_bytes`)."""
    named = charsets or {}
    fields: dict[str, list[str]] = {}
    for part in parts:
        if part.filename is None:
            label = part.charset or named.get(part.name)
            fields.setdefault(part.name, []).append(decode_bytes(part.data, label))
    return fields


# -- ids ------------------------------------------------------------------------------------------------
MAX_REFERENCES = 100


def thread_ids(raw: str | None) -> tuple[str, ...]:
    """The ids of an In-Reply-To or References header as stored, the latest `MAX_REFERENCES` of them."""
    return tuple(stable_key(i) for i in message_ids(raw)[-MAX_REFERENCES:])


def rfc_id(raw: str | None) -> str | None:
    """The Message-ID as stored, from the header's whole value."""
    ids = message_ids(raw)
    return stable_key(ids[0]) if ids else None


def external_id(sender: str, message_id: str | None, body: bytes) -> str:
    """An email's id where the provider gives none: the normalized sender and the Message-ID together,
    so a stranger who reuses someone's Message-ID stores a message of their own; a digest of the body
    when there is no Message-ID. A provider's retry carries the same, so it keys the delivery too."""
    if message_id is None:
        return "sha256:" + hashlib.sha256(body).hexdigest()
    key = f"{sender.strip().lower()}\n{message_id}".encode("utf-8", "surrogatepass")
    return "email:" + hashlib.sha256(key).hexdigest()
