"""Normalization: one spelling per phone number, email address and name, and readable email bodies."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from html import unescape
from typing import Protocol

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_SPACE = re.compile(r"\s+")
_PHONE_PREFIXES = ("whatsapp:", "tel:", "sms:", "mms:")


# Senders write again and again: phone and email normalization are pure and cached per process (a
# bounded cache: 16,384 entries of a few hundred bytes each, about 4 MB).
@lru_cache(maxsize=16_384)
def phone_e164(raw: str, region: str | None) -> str | None:
    """E.164 for a number in any common format; national numbers use the inbox's default region."""
    value = raw.strip()
    for prefix in _PHONE_PREFIXES:
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
    value = value.strip()
    if value.isdigit() and len(value) > 10 and not value.startswith("0"):
        value = "+" + value  # WhatsApp's wa_id: the international number without '+'
    try:
        number = phonenumbers.parse(value, (region or "US").upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=16_384)
def valid_email(raw: str) -> str | None:
    """The address in email-validator's normal form (domain lower-cased), or None when it is not one."""
    try:
        return validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=True).normalized
    except EmailNotValidError:
        return None


def email_address(raw: str) -> str | None:
    """The validated address, lower-cased (mailbox providers treat local parts case-insensitively)."""
    normalized = valid_email(raw)
    return normalized.lower() if normalized else None


class Handle(Protocol):
    """A raw handle for a person as a channel gave it (`pipelines.channels.base.Identity`): read here, never
    imported, since the channels call this module."""

    @property
    def kind(self) -> str: ...

    @property
    def value(self) -> str: ...


def identity(item: Handle, region: str | None) -> tuple[str, str]:
    """(kind, value) as stored in contact_identities; unparseable handles are kept as external ids."""
    if item.kind == "phone":
        e164 = phone_e164(item.value, region)
        return ("phone", e164) if e164 else ("external", "phone:" + item.value.strip())
    if item.kind == "email":
        email = email_address(item.value)
        return ("email", email) if email else ("external", "email:" + item.value.strip().lower())
    return item.kind, item.value.strip()


def display_name(raw: str | None, *handles: str) -> str | None:
    """A person's name without quotes, control characters, stray spacing, or a handle posing as a name."""
    if not raw:
        return None
    cleaned = "".join(ch for ch in unicodedata.normalize("NFC", raw) if unicodedata.category(ch)[0] != "C")
    cleaned = _SPACE.sub(" ", cleaned).strip().strip("\"'`").strip()
    if not cleaned or cleaned.lower() in {h.lower() for h in handles} or ("@" in cleaned and " " not in cleaned):
        return None
    return cleaned[:200]


# -- HTML to text ----------------------------------------------------------------------------------------
# Email HTML is written by strangers, so it is read by a small tokenizer of our own rather than the
# standard library's HTMLParser, whose handling of unfinished constructs (runs of "<a ", "</", "<![")
# rescans the rest of the input and takes minutes on a few tens of kilobytes. Every step below either
# consumes input or ends the scan: a construct that never closes runs to the end of the input, as in the
# HTML standard's tokenizer, so it is dropped there. Only the first HTML_LIMIT characters are converted.
HTML_LIMIT = 2 * 1024 * 1024
TRUNCATED = "[…truncated]"
_BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
                     "table", "ul", "ol", "section", "article", "header", "footer", "hr", "pre"})
_SKIPPED = frozenset({"head", "title", "template"})  # their text is not part of the message
_RAW_TEXT = frozenset({"script", "style"})  # their content is not markup: it ends only at the end tag
_MARKUP = re.compile(r"<[A-Za-z/!?]")  # a "<" followed by anything else is text
# A tag after its "<": the name, then attributes up to ">"; a quoted value (after "=") may hold ">", a
# quote anywhere else is an ordinary character. Possessive, so a match attempt never backtracks; a scan
# for a closing quote fails at most once per quote character (no quote of that kind is left after it).
_TAG = re.compile(r"""(/?)([A-Za-z][^\s/>]*+)(?:[^>"'=]++|=\s*+"[^"]*+"|=\s*+'[^']*+'|[="'])*+>""")
_RAW_END = {name: re.compile(rf"</{name}[\s/>]", re.IGNORECASE) for name in _RAW_TEXT}


def html_to_text(html: str) -> str:
    """The readable text of an email's HTML: block elements become line breaks, entities are decoded.

    Linear in the input; HTML beyond HTML_LIMIT characters is not read, and the text then ends with
    TRUNCATED.
    """
    truncated = len(html) > HTML_LIMIT
    parts = _html_text_parts(html[:HTML_LIMIT] if truncated else html)
    lines = [_SPACE.sub(" ", line).strip() for line in "".join(parts).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return f"{text}\n{TRUNCATED}" if truncated else text


def _html_text_parts(html: str) -> list[str]:
    parts: list[str] = []
    skipping = 0  # depth inside elements whose text is dropped
    position, end = 0, len(html)
    while position < end:
        markup = _MARKUP.search(html, position)
        start = markup.start() if markup else end
        if start > position and not skipping:
            parts.append(unescape(html[position:start]))
        if start >= end:
            break
        position, text, depth = _markup(html, start)
        if position < 0:  # a construct that never closes: the rest of the input belongs to it
            break
        skipping = max(0, skipping + depth)
        if text and not skipping:
            parts.append(text)
    return parts


def _markup(html: str, start: int) -> tuple[int, str, int]:
    """The markup at `start` (a "<"): (the position after it or -1 when it runs to the end of the input,
    the text it stands for, +1 or -1 when it opens or closes an element whose text is dropped)."""
    following = html[start + 1:start + 4]
    if following.startswith("!--"):
        close = html.find("-->", start + 4)
        return (-1 if close < 0 else close + 3), "", 0
    if following[:1] in ("!", "?") or (following[:1] == "/" and not following[1:2].isalpha()):
        close = html.find(">", start + 1)  # a declaration, processing instruction or bogus comment
        return (-1 if close < 0 else close + 1), "", 0
    tag = _TAG.match(html, start + 1)
    if tag is None:
        return -1, "", 0
    closing, name = tag.group(1) == "/", tag.group(2).lower()
    if name in _BLOCKS:
        return tag.end(), "\n", 0
    if name in _SKIPPED:
        return tag.end(), "", -1 if closing else 1
    if name in _RAW_TEXT and not closing:
        end_tag = _RAW_END[name].search(html, tag.end())
        return (-1 if end_tag is None else end_tag.start()), "", 0
    return tag.end(), "", 0


# -- quoted replies -----------------------------------------------------------------------------------
# Where a quoted earlier message starts, in the languages the fleet serves. Markers are short lines:
# only lines of at most MARKER_LINE_CHARS are tried, and only the first MARKER_LINES lines of a message,
# so the heuristics read a bounded amount of any email; a message longer than that is split only at a
# trailing block of quoted lines, which one backward pass finds.
MARKER_LINES = 2_000
MARKER_LINE_CHARS = 500
_QUOTE_MARKERS = re.compile(
    r"^(On .{3,200} wrote:|Le .{3,200} a écrit\s?:|Am .{3,200} schrieb .{0,200}:|El .{3,200} escribió:|"
    r".{3,200} kirjoitti:|Den .{3,200} skrev .{0,200}:|-{2,} ?Original Message ?-{2,}|"
    r"-{2,} ?Alkuperäinen viesti ?-{2,}|-{2,} ?Ursprüngliche Nachricht ?-{2,}|"
    r"From: .+|Von: .+|De: .+|Lähettäjä: .+|Från: .+|_{10,})\s*$",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"^(-- ?|Sent from my .+|Lähetetty .+|Von meinem .+ gesendet|Enviado desde .+)$",
                        re.IGNORECASE)


def split_reply(text: str, provider_reply: str | None = None) -> tuple[str, str | None]:
    """(the new part of an email, the quoted history and signature or None).

    The history starts at the first marker line ("On ... wrote:", a signature separator, ...) or at the
    first ">" line of the block of quoted and blank lines that ends the message, whichever comes first.
    """
    text = text.replace("\r\n", "\n").strip()
    if provider_reply and provider_reply.strip():
        reply = provider_reply.strip()
        rest = text[len(reply):].strip() if text.startswith(reply) else None
        return reply, rest or None
    lines = text.split("\n")
    cut = min(_first_marker(lines), _trailing_quote(lines))
    reply = "\n".join(lines[:cut]).strip()
    quoted = "\n".join(lines[cut:]).strip() or None
    if not reply:  # nothing but a quote: keep the whole text as the message
        return text, None
    return reply, quoted


def _first_marker(lines: list[str]) -> int:
    """The index of the first marker line among the first MARKER_LINES lines, else len(lines)."""
    for index, line in enumerate(lines[:MARKER_LINES]):
        stripped = line.strip()
        if len(stripped) <= MARKER_LINE_CHARS and (_QUOTE_MARKERS.match(stripped) or _SIGNATURE.match(stripped)):
            return index
    return len(lines)


def _trailing_quote(lines: list[str]) -> int:
    """The index of the first ">" line of the quoted and blank lines that end the text, else len(lines)."""
    cut = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        stripped = lines[index].strip()
        if stripped.startswith(">"):
            cut = index
        elif stripped:
            break
    return cut
