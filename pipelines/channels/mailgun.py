"""Mailgun inbound routes: parsed form posts (urlencoded or multipart) or raw MIME (`body-mime`).

Authenticity: `signature` = hex(HMAC-SHA256(webhook signing key, timestamp + token)). The signature does
not cover the body, so a captured (timestamp, token, signature) could be replayed with another body: a
token is accepted once, and only within the timestamp window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import unquote_plus

import orjson

from pipelines.channels import email
from pipelines.channels.base import (
    MAX_FORM_PARTS,
    Attachment,
    Delivery,
    Identity,
    InboundMessage,
    PayloadError,
    SignatureError,
    VerifyContext,
    WebhookRequest,
    constant_time_equal,
    first,
    refusing,
)

CHANNEL = "mailgun"


def signature(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def verify(request: WebhookRequest, secrets: Mapping[str, str], context: VerifyContext) -> None:
    """Check the signature from the three signed fields alone: nothing else of the body is read."""
    fields = signed_fields(request)
    timestamp, token, given = (fields.get(name, "") for name in SIGNED_FIELDS)
    expected = signature(secrets["signing_key"], timestamp, token)
    signed = constant_time_equal(expected, given) and bool(given)
    fresh = (0 < len(timestamp) <= 20 and timestamp.isascii() and timestamp.isdigit()
             and abs(context.now.timestamp() - int(timestamp)) <= context.tolerance_seconds)
    if not (signed and fresh):
        raise SignatureError("signature verification failed")


def replay_token(request: WebhookRequest) -> str | None:
    """The one-time token the ingress claims after `verify`, so a replayed token is refused."""
    try:
        return signed_fields(request).get("token")
    except SignatureError:
        return None


# -- the signed fields, read before anyone is authenticated -------------------------------------------------
# A form may be 25 MiB. Parsing all of it to find three short fields would let anyone who knows an inbox
# URL spend seconds of the event loop per request, so `verify` scans the raw bytes for those fields only:
# C-speed searches for the field names (URL-encoded) or the part delimiters (multipart), with every step
# bounded. A body too odd to scan this way (more than MAX_FORM_PARTS parts, a part header longer than
# MAX_PART_HEADER, a signed value longer than MAX_SIGNED_VALUE) fails verification; Mailgun sends none.
SIGNED_FIELDS = ("timestamp", "token", "signature")
MAX_PART_HEADER = 4_096
MAX_SIGNED_VALUE = 1_024
_MAX_BOUNDARY = 200  # RFC 2046 allows 70 characters
_DELIMITER_PADDING = 200  # white space allowed after a part delimiter, before its line break
_PART_NAME = re.compile(rb'(?:^|;)[ \t]*name[ \t]*=[ \t]*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
_PART_FILENAME = re.compile(rb"(?:^|;)[ \t]*filename\*?[ \t]*=", re.IGNORECASE)


def signed_fields(request: WebhookRequest) -> dict[str, str]:
    """The first value of each of `timestamp`, `token` and `signature` found in the form.

    Linear in the body and cheap: at most three searches through a URL-encoded body; for multipart, one
    count of the delimiters, then a walk over at most MAX_FORM_PARTS parts that stops once all three are found.
    """
    if request.content_type == "application/x-www-form-urlencoded":
        return _urlencoded_fields(request.body)
    if request.content_type == "multipart/form-data":
        return _multipart_fields(request.body, _boundary(request.headers.get("content-type", "")))
    raise SignatureError("signature verification failed")


def _urlencoded_fields(body: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in SIGNED_FIELDS:
        key = name.encode() + b"="
        if body.startswith(key):
            start = len(key)
        else:
            pair = body.find(b"&" + key)
            if pair < 0:
                continue
            start = pair + 1 + len(key)
        end = body.find(b"&", start, start + MAX_SIGNED_VALUE + 1)
        if end < 0:
            if len(body) - start > MAX_SIGNED_VALUE:
                raise SignatureError("signature verification failed")
            end = len(body)
        found[name] = unquote_plus(body[start:end].decode("latin-1"), errors="replace")
    return found


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if 0 < len(value) <= _MAX_BOUNDARY and value.isascii():
                return value.encode("ascii")
    raise SignatureError("signature verification failed")


def _multipart_fields(body: bytes, boundary: bytes) -> dict[str, str]:
    delimiter = b"--" + boundary
    if body.count(delimiter) > MAX_FORM_PARTS + 1:  # every part opens with one, and the last one closes
        raise SignatureError("signature verification failed")
    found: dict[str, str] = {}
    position = 0 if body.startswith(delimiter) else _next_delimiter(body, delimiter, 0)
    while position >= 0 and len(found) < len(SIGNED_FIELDS):
        after = position + len(delimiter)
        line_end = body.find(b"\n", after, after + _DELIMITER_PADDING)
        rest = body[after:line_end if line_end >= 0 else after + _DELIMITER_PADDING]
        if rest.startswith(b"--"):  # the closing delimiter
            break
        if line_end < 0 or rest.strip(b" \t\r"):  # "--boundary" and more on its line is no delimiter
            position = _next_delimiter(body, delimiter, position + 1)
            continue
        content, header = _part_content(body, line_end)
        position = _next_delimiter(body, delimiter, content - 1)
        name = _part_name(body[line_end + 1:header])
        if name in SIGNED_FIELDS and name not in found:
            end = position - 1 if position >= 0 else len(body)
            if end - content > MAX_SIGNED_VALUE + 1:
                raise SignatureError("signature verification failed")
            found[name] = body[content:end].removesuffix(b"\r").decode("utf-8", "replace")
    return found


def _next_delimiter(body: bytes, delimiter: bytes, start: int) -> int:
    """Where the next line that starts with `delimiter` starts, or -1."""
    found = body.find(b"\n" + delimiter, max(start, 0))
    return -1 if found < 0 else found + 1


def _part_content(body: bytes, line_end: int) -> tuple[int, int]:
    """(where a part's content starts, where its header block ends) after its delimiter line."""
    limit = line_end + MAX_PART_HEADER
    ends = [end for end in (body.find(b"\n\r\n", line_end, limit), body.find(b"\n\n", line_end, limit)) if end >= 0]
    if not ends:
        raise SignatureError("signature verification failed")
    header = min(ends)
    return header + (3 if body.startswith(b"\n\r\n", header) else 2), header


def _part_name(header: bytes) -> str | None:
    """The form field name of a part that is not a file, from its Content-Disposition header."""
    for line in header.split(b"\n"):
        field, _, value = line.partition(b":")
        if field.strip().lower() == b"content-disposition":
            named = _PART_NAME.search(value)
            if named is None or _PART_FILENAME.search(value):
                return None
            return (named.group(1) if named.group(1) is not None else named.group(2)).decode("latin-1")
    return None


@refusing
def parse(request: WebhookRequest) -> Delivery:
    """Mailgun posts its parsed fields in UTF-8 (a multipart part naming another charset is read in it);
    `body-mime` is the message as received, each MIME part read in its own charset."""
    parts = email.form_parts(request)
    fields = email.text_fields(parts)
    mime = next((p.data for p in parts if p.name == "body-mime"), None)
    if mime:
        parsed = email.parse_mime(mime)
        pairs, text, html, attachments = parsed.headers, parsed.text, parsed.html, parsed.attachments
    else:
        try:
            header_list = orjson.loads(first(fields, "message-headers") or "[]")
        except orjson.JSONDecodeError:
            raise PayloadError("message-headers is not JSON") from None
        if not isinstance(header_list, list):
            raise PayloadError("message-headers is not a JSON list")
        pairs = [(str(h[0]), str(h[1])) for h in header_list if isinstance(h, list) and len(h) == 2]
        text, html = first(fields, "body-plain") or "", first(fields, "body-html")
        attachments = tuple(Attachment(filename=p.filename, content_type=p.content_type, size=len(p.data))
                            for p in parts if p.filename is not None)

    def field(*names: str) -> str | None:
        """The first of the named form fields, else the message's header of that name."""
        found = next((v for v in (first(fields, n) for n in names) if v), None)
        return found or email.header(pairs, names[-1])

    headers = email.kept_headers(pairs)
    name, sender = email.address(field("from", "From"))
    sender = sender or first(fields, "sender")
    if not sender:
        raise PayloadError("missing sender ('from' or 'sender')")
    rfc_id = email.rfc_id(field("Message-Id"))
    external_id = email.external_id(sender, rfc_id, request.body)
    attachments, omitted = email.capped_attachments(attachments)
    message = InboundMessage(
        channel=CHANNEL,
        external_id=external_id,
        sent_at=email.header_date(headers.get("date")) or request.received_at,
        kind="email",
        sender_name=name,
        identities=(Identity(kind="email", value=sender),),
        recipients=email.addresses(field("To")) + email.addresses(field("Cc"))
        or email.addresses(first(fields, "recipient")),
        text=text,
        html=str(html) if html else None,
        subject=email.decode_words(field("subject", "Subject") or "") or None,
        stripped_reply=first(fields, "stripped-text") or None,
        rfc_message_id=rfc_id,
        in_reply_to=next(iter(email.thread_ids(field("In-Reply-To"))), None),
        references=email.thread_ids(field("References")),
        attachments=attachments,
        headers=headers,
        metadata={"stripped_signature": first(fields, "stripped-signature") or None, **omitted},
    )
    return Delivery(dedupe_key=external_id, messages=(message,))
