"""Hypothesis strategies for hostile deliveries: each provider's payload shape with mutated fields.

Shapes stay close to what the providers document, so most examples get past the first checks and reach
the parsers' deeper branches; the values inside are the ones that broke things before: NUL, lone
surrogates, RFC 2047 encoded words with NUL or unknown charsets, control characters, huge integers,
deep nesting, wrong types, missing keys.
"""

from __future__ import annotations

import base64
import copy
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.fuzz import shapes
from tests.fuzz.seeds import Seed

# `make test` runs a bounded number of examples; `make fuzz` (HYPOTHESIS_PROFILE=long) many more.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
SCALE = {"default": 1, "long": 50}.get(PROFILE, 1)


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, suppress_health_check=list(HealthCheck),
                    print_blob=True)


NASTY = [
    "\x00", "a\x00b", "\ud800", "a\udfffb", "\udc80\ud800", "=?utf-8?q?a=00b?=", "=?utf-8?b?AA==?=",
    "=?iso-2022-jp?b?GyRCJEskWyRzGyhC?=", "=?x-unknown?q?=FF=00?=", "=?utf-8?q?", "\r\n", "\r\nBcc: x@evil.example",
    "\u202e", "\ufeff", "\u2028", "\x1b[31m", "<", ">", "<>", "<<@>>", "@", "\\", '"', "%00", "&#0;", "\x7f",
    "\U0010ffff", "\ufffe", " ", "",
]
LONG = st.sampled_from([("A", 600), ("> ", 300), ("x", 1200)]).map(lambda pair: pair[0] * pair[1])
CHARSETS = ["utf-8", "UTF-8", "iso-8859-1", "latin1", "windows-1252", "cp1252", "iso-2022-jp", "shift_jis", "utf-16",
            "utf-7", "koi8-r", "x-unknown", "", "\x00", "utf-8\x00", "x" * 300]

characters = st.characters(exclude_categories=())  # every code point, lone surrogates included
nasty_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(NASTY),
    LONG,
    st.lists(st.one_of(st.sampled_from(NASTY), st.text(characters, max_size=8)), max_size=6).map("".join),
)


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    charset = draw(st.sampled_from(CHARSETS))
    raw = draw(st.binary(max_size=24) | st.text(characters, max_size=12).map(
        lambda t: t.encode("utf-8", errors="surrogatepass")))
    if draw(st.booleans()):
        return f"=?{charset}?b?{base64.b64encode(raw).decode()}?="
    return f"=?{charset}?q?{''.join(f'={b:02X}' for b in raw)}?="


header_values = st.one_of(nasty_text, encoded_words(),
                          st.lists(encoded_words() | nasty_text, min_size=1, max_size=4).map(" ".join))
huge_integers = st.sampled_from([10**400, -(10**40), 2**63, -(2**63) - 1, 2**64])
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), huge_integers, st.floats(allow_nan=False),
                        nasty_text)
json_values = st.recursive(json_leaves, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(nasty_text, children, max_size=4), max_leaves=20)
deep_json = st.integers(min_value=50, max_value=1200).map(shapes.nested)
hostile_values = st.one_of(json_values, deep_json, huge_integers)
emails = st.one_of(st.emails(), nasty_text, st.builds(lambda n, e: f"{n} <{e}>", header_values, st.emails()))
message_ids = st.one_of(st.builds(lambda a: f"{a}@mail.example", st.text(max_size=20)), nasty_text, encoded_words(),
                        st.integers(1, 20_000).map(lambda n: "m" * n + "@mail.example"))
timestamps = st.one_of(st.integers(0, 2_000_000_000).map(str), st.integers(), huge_integers, nasty_text)
dates = st.one_of(st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()), nasty_text, json_leaves)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A drawn shape with up to three of its fields, anywhere in it, replaced by hostile values or removed."""
    with shapes.deep_recursion():
        value = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(value, ()))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        container = value
        for key in path[:-1]:
            container = container[key]
        if isinstance(container, dict) and draw(st.booleans()):
            del container[path[-1]]
        else:
            container[path[-1]] = draw(hostile_values)
    return value


def _paths(value: Any, prefix: tuple[Any, ...]) -> Any:
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        if len(prefix) < 8:
            yield from _paths(child, (*prefix, key))


# -- each provider's shapes --------------------------------------------------------------------------
api_contact = st.fixed_dictionaries({}, optional={"name": nasty_text, "email": emails, "phone": nasty_text,
                                                  "external_id": nasty_text})
api_message = st.fixed_dictionaries(
    {"id": nasty_text, "type": st.just("message"), "sent_at": dates, "text": nasty_text, "contact": api_contact},
    optional={"html": nasty_text, "subject": header_values, "in_reply_to": nasty_text,
              "metadata": st.dictionaries(nasty_text, json_values, max_size=4) | deep_json.map(lambda d: {"d": d}),
              "attachments": st.lists(st.fixed_dictionaries({}, optional={
                  "url": nasty_text, "filename": nasty_text, "content_type": nasty_text,
                  "size": st.integers() | huge_integers}), max_size=3)},
)
api_status = st.fixed_dictionaries({"type": st.just("status"), "message_id": nasty_text,
                                    "status": st.sampled_from(["sent", "delivered", "read", "failed", "x"]),
                                    "at": dates}, optional={"error": nasty_text})
api_bodies = st.one_of(api_message, st.lists(api_message | api_status, min_size=1, max_size=4).map(
    lambda items: {"items": items}))

wa_kinds = st.sampled_from(["text", "image", "audio", "document", "location", "interactive", "button", "reaction",
                            "contacts", "order", "unsupported"])


@st.composite
def whatsapp_message(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(wa_kinds)
    inner = draw(st.fixed_dictionaries({}, optional={
        "body": nasty_text, "caption": nasty_text, "id": nasty_text, "mime_type": nasty_text, "name": nasty_text,
        "address": nasty_text, "emoji": nasty_text, "text": nasty_text, "button_reply": st.fixed_dictionaries(
            {"id": nasty_text, "title": nasty_text})}))
    message = {"from": draw(nasty_text | st.integers(1, 10**15).map(str)), "id": draw(nasty_text),
               "timestamp": draw(timestamps), "type": kind, kind: inner}
    if draw(st.booleans()):
        message["context"] = {"id": draw(nasty_text), "from": draw(nasty_text)}
    return message


whatsapp_bodies = st.builds(
    lambda messages, statuses, name, wa_id: {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"metadata": {"phone_number_id": "1"},
                                        "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                                        "messages": messages, "statuses": statuses}}]}]},
    st.lists(whatsapp_message(), max_size=3),
    st.lists(st.fixed_dictionaries({"id": nasty_text, "status": st.sampled_from(["sent", "delivered", "read", "x"]),
                                    "timestamp": timestamps}), max_size=2),
    nasty_text, nasty_text,
)
telegram_bodies = st.builds(
    lambda update_id, kind, message: {"update_id": update_id, kind: message},
    st.integers() | huge_integers,
    st.sampled_from(["message", "edited_message", "channel_post", "callback_query"]),
    st.fixed_dictionaries(
        {"message_id": st.integers() | nasty_text, "date": timestamps,
         "chat": st.fixed_dictionaries({"id": st.integers() | huge_integers | nasty_text, "type": nasty_text}),
         "from": st.fixed_dictionaries({"id": st.integers() | nasty_text}, optional={
             "first_name": nasty_text, "last_name": nasty_text, "username": nasty_text})},
        optional={"text": nasty_text, "caption": nasty_text, "photo": st.lists(json_values, max_size=2),
                  "document": json_values, "location": json_values, "contact": json_values,
                  "reply_to_message": json_values}),
)
header_pairs = st.lists(st.tuples(st.sampled_from(["Message-ID", "In-Reply-To", "References", "List-Id", "Date",
                                                    "Subject", "Auto-Submitted", "X-Other"]) | nasty_text,
                                  header_values), max_size=6)
postmark_bodies = st.builds(
    lambda pid, sender, text, message_id, headers, html, subject: shapes.postmark_email(
        pid, sender, text, message_id=message_id, headers=headers, HtmlBody=html, Subject=subject),
    nasty_text, emails, nasty_text, message_ids | st.none(), header_pairs, nasty_text | st.none(), header_values,
)


@st.composite
def raw_emails(draw: st.DrawFn) -> bytes:
    """An RFC 5322 message: encoded-word headers, a body in some (maybe unknown) charset, maybe multipart."""
    headers = [("From", draw(emails)), ("Subject", draw(header_values)), ("Message-ID", f"<{draw(message_ids)}>"),
               *draw(header_pairs)]
    charset = draw(st.sampled_from(CHARSETS))
    text = draw(nasty_text)
    try:
        body = text.encode(charset)
    except (LookupError, UnicodeError, ValueError):
        body = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        return shapes.raw_email(headers, body, charset=charset, subtype=draw(st.sampled_from(["plain", "html"])))
    # Body parts as mailers send them: plain, `inline` with a file name, or (never the body) `attachment`.
    disposition = draw(st.sampled_from(["", 'inline; filename="msg.txt"', 'attachment; filename="notes.txt"']))
    part = shapes.raw_email([("Content-Disposition", disposition)] if disposition else [], body, charset=charset)
    lines = [f"{name}: {value}" for name, value in headers]
    alternative = b"\r\n".join([b'Content-Type: multipart/alternative; boundary="b"', b"", b"--b", part, b"--b",
                                 part.replace(b"text/plain", b"text/html"), b"--b--", b""])
    if draw(st.booleans()):  # inside a multipart/mixed, beside a text file that is an attachment
        attached = shapes.raw_email([("Content-Disposition", 'attachment; filename="log.txt"')], body, charset=charset)
        alternative = b"\r\n".join([b'Content-Type: multipart/mixed; boundary="m"', b"", b"--m", alternative,
                                     b"--m", attached, b"--m--", b""])
    head = "\r\n".join([*lines, "MIME-Version: 1.0", ""])
    return head.encode("utf-8", errors="surrogatepass") + alternative


@st.composite
def mailgun_cases(draw: st.DrawFn) -> tuple[bytes, str]:
    if draw(st.booleans()):
        fields = shapes.mailgun_fields(draw(emails), draw(nasty_text), message_id=draw(message_ids | st.none()),
                                       headers=draw(header_pairs), extra=[("subject", draw(header_values))])
        if draw(st.booleans()):
            fields.append(("body-html", draw(nasty_text)))
    else:
        fields = [("from", draw(emails)), ("body-mime", draw(raw_emails()).decode("utf-8", errors="surrogateescape"))]
    if draw(st.booleans()):
        return shapes.form(fields), shapes.FORM
    return shapes.multipart(list(fields)), shapes.MULTIPART


@st.composite
def sendgrid_cases(draw: st.DrawFn) -> tuple[bytes, str]:
    if draw(st.booleans()):
        return shapes.multipart([("email", draw(raw_emails())), ("from", draw(emails))]), shapes.MULTIPART
    charset = draw(st.sampled_from(CHARSETS))
    named = draw(st.none() | st.dictionaries(st.sampled_from(["text", "from", "subject", "headers", "html"]),
                                             st.sampled_from(CHARSETS)))
    fields = shapes.sendgrid_fields(draw(emails), draw(nasty_text), message_id=draw(message_ids | st.none()),
                                    charset=charset, charsets=named, subject=draw(header_values),
                                    header_lines=[f"{n}: {v}" for n, v in draw(header_pairs)])
    return shapes.multipart(fields), shapes.MULTIPART


@st.composite
def twilio_cases(draw: st.DrawFn) -> tuple[bytes, str]:
    fields = shapes.twilio_sms(draw(nasty_text), draw(nasty_text), draw(nasty_text))
    fields += draw(st.lists(st.tuples(st.sampled_from([
        "MessageStatus", "NumMedia", "MediaUrl0", "MediaContentType0", "Latitude", "Longitude", "ProfileName",
        "ButtonText", "ErrorCode", "ErrorMessage", "WaId"]) | nasty_text, nasty_text), max_size=5))
    if draw(st.booleans()):
        return shapes.dumps(dict(fields)), shapes.JSON
    return shapes.form(fields), shapes.FORM


def _json_cases(shape: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[bytes, str]]:
    return mutated(shape).map(lambda value: (shapes.dumps(value), shapes.JSON))


SHAPED: dict[str, st.SearchStrategy[tuple[bytes, str]]] = {
    "api": _json_cases(api_bodies),
    "whatsapp": _json_cases(whatsapp_bodies),
    "telegram": _json_cases(telegram_bodies),
    "postmark": _json_cases(postmark_bodies),
    "twilio": twilio_cases(),
    "mailgun": mailgun_cases(),
    "sendgrid": sendgrid_cases(),
}
content_types = st.sampled_from([shapes.JSON, shapes.FORM, shapes.MULTIPART, "multipart/form-data", "text/plain",
                                 "", "application/json; charset=utf-16", "multipart/form-data; boundary=\x00"])
raw_cases = st.tuples(st.binary(max_size=300) | json_values.map(shapes.dumps), content_types)


# What an HTTP header value can carry past the server: visible ASCII, spaces and tabs, and Latin-1 bytes.
header_text = st.text(st.characters(min_codepoint=0x09, max_codepoint=0xFF, exclude_characters="\n\x0b\x0c\r\x7f")
                      .filter(lambda c: c == "\t" or c >= " "), max_size=40)


def cases(channel: str, *, shaped_only: bool = False) -> st.SearchStrategy[Seed]:
    """Deliveries for `channel`: mostly its own shapes, mutated; otherwise raw bytes under any content type."""
    source = SHAPED[channel] if shaped_only else st.one_of(SHAPED[channel], SHAPED[channel], raw_cases)
    return st.builds(lambda pair, webhook_id: Seed(channel, "generated", pair[0], pair[1], {"webhook-id": webhook_id}),
                     source, header_text | st.uuids().map(str))
