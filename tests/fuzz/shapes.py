"""Payloads in each provider's documented shape, built from parts: for seeds, fuzz strategies and corpora.

Every builder takes the values a hostile sender controls as plain arguments and writes the bytes the
provider would post, so a test can put anything into any field without hand-writing the framing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

BOUNDARY = "xYzZY"
FORM = "application/x-www-form-urlencoded"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"


def dumps(value: Any) -> bytes:
    """JSON as a hostile sender writes it: the stdlib escapes lone surrogates and writes any integer."""
    with deep_recursion():
        return json.dumps(value).encode()


@contextmanager
def deep_recursion(limit: int = 20_000) -> Iterator[None]:
    """Room for values nested a thousand levels and more (the default limit is 1,000 frames)."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def form(fields: list[tuple[str, str]]) -> bytes:
    return urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()


def multipart(fields: Sequence[tuple[str, bytes | str]], files: Sequence[tuple[str, str, bytes]] = ()) -> bytes:
    """multipart/form-data with the boundary `BOUNDARY`; text parts carry no charset, as SendGrid's do."""
    out: list[bytes] = []
    for name, value in fields:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", errors="surrogatepass")
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + raw + b"\r\n")
    for name, filename, data in files:
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def raw_email(headers: list[tuple[str, str]], body: bytes, charset: str = "utf-8",
              subtype: str = "plain") -> bytes:
    """One-part RFC 5322 message; header values are written as given (encoded words included)."""
    lines = [f"{name}: {value}" for name, value in headers]
    lines += ["MIME-Version: 1.0", f'Content-Type: text/{subtype}; charset="{charset}"',
              "Content-Transfer-Encoding: 8bit"]
    head = "\r\n".join(lines).encode("utf-8", errors="surrogatepass")
    return head + b"\r\n\r\n" + body


def api_message(msg_id: str, text: str, *, sent_at: str = "2026-11-20T10:00:00Z", contact: Any = None,
                metadata: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"id": msg_id, "type": "message", "sent_at": sent_at, "text": text,
                               "contact": contact if contact is not None else {"external_id": "cust-1"}}
    if metadata is not None:
        message["metadata"] = metadata
    return {**message, **extra}


def postmark_email(postmark_id: str, sender: str, text: str, *, message_id: str | None = None,
                   headers: Sequence[tuple[str, str]] = (), **extra: Any) -> dict[str, Any]:
    pairs = [("Message-ID", message_id)] if message_id is not None else []
    return {"FromFull": {"Email": sender, "Name": "Sender"}, "MessageID": postmark_id, "Subject": "Hello",
            "Date": "Fri, 20 Nov 2026 10:00:00 +0000", "TextBody": text, "ToFull": [],
            "Headers": [{"Name": n, "Value": v} for n, v in [*pairs, *headers]], **extra}


def mailgun_fields(sender: str, text: str, *, message_id: str | None = None,
                   headers: Sequence[tuple[str, str]] = (), extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """A parsed Mailgun route post (the signature fields are added when it is signed)."""
    pairs = [["Message-Id", f"<{message_id}>"]] if message_id is not None else []
    fields = [("from", sender), ("sender", sender), ("recipient", "inbox@help.example.com"), ("subject", "Hello"),
              ("body-plain", text), ("message-headers", json.dumps([*pairs, *[list(h) for h in headers]]))]
    if message_id is not None:
        fields.append(("Message-Id", f"<{message_id}>"))
    return fields + list(extra)


def sendgrid_fields(sender: str, text: str | bytes, *, message_id: str | None = None, charset: str = "utf-8",
                    charsets: dict[str, str] | None = None, header_lines: Sequence[str] = (),
                    subject: str = "Hello") -> list[tuple[str, bytes | str]]:
    """A SendGrid Inbound Parse post: each field in the email's own `charset`, named in `charsets`."""

    def encoded(value: str | bytes) -> bytes:
        if isinstance(value, bytes):
            return value
        try:
            return value.encode(charset, errors="surrogatepass")
        except UnicodeEncodeError:
            return value.encode(charset, errors="replace")
        except (LookupError, ValueError):  # an unknown charset, or a name no codec accepts
            return value.encode("utf-8", errors="surrogatepass")

    lines = [f"From: {sender}", "To: inbox@help.example.com", f"Subject: {subject}",
             "Date: Fri, 20 Nov 2026 10:00:00 +0000", *header_lines]
    if message_id is not None:
        lines.append(f"Message-ID: <{message_id}>")
    named = charsets if charsets is not None else {k: charset for k in ("headers", "from", "to", "subject", "text")}
    return [("headers", encoded("\n".join(lines) + "\n")), ("from", encoded(sender)),
            ("to", "inbox@help.example.com"), ("subject", encoded(subject)), ("text", encoded(text)),
            ("envelope", json.dumps({"from": sender, "to": ["inbox@help.example.com"]})),
            ("charsets", json.dumps(named))]


def telegram_update(update_id: int, chat_id: int, message_id: int, text: str, **sender: Any) -> dict[str, Any]:
    author = {"id": chat_id, "is_bot": False, "first_name": "Sam", **sender}
    return {"update_id": update_id, "message": {"message_id": message_id, "date": 1_763_632_800,
                                                "chat": {"id": chat_id, "type": "private"}, "from": author,
                                                "text": text}}


def whatsapp_text(wa_id: str, wamid: str, text: str, *, name: str = "Sam", timestamp: Any = "1763632800") -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": "1"}, "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": wamid, "timestamp": timestamp, "type": "text", "text": {"body": text}}]}}]}]}


def twilio_sms(sid: str, sender: str, text: str, **extra: str) -> list[tuple[str, str]]:
    return [("MessageSid", sid), ("From", sender), ("To", "+15557654321"), ("Body", text), ("NumMedia", "0"),
            ("SmsStatus", "received"), *extra.items()]


def nested(depth: int, leaf: Any = "x") -> Any:
    """A JSON value `depth` levels deep, alternating objects and lists."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def quoted_reply(lines: int) -> str:
    """A short answer above a long quoted history, as mail clients write it."""
    history = "\n".join(f"{'>' * (1 + n % 4)} line {n} of the earlier thread" for n in range(lines))
    return "Thanks, that fixed it.\n\nOn Fri, 20 Nov 2026 at 10:00, Support wrote:\n" + history


def hostile_html(depth: int) -> str:
    """Deeply nested, unclosed and comment-riddled markup around one sentence."""
    return ("<div><span><!--" * depth + "-->" + "<p><b><i>" * depth + "Please help" + "<table><tr><td>" * depth
            + "</td>" * (depth // 2) + "<script>" + "x" * depth + "</script>" + "&amp;&#0;&#xD800;&#99999999;" * 10)
