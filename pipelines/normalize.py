"""Normalization: one spelling per phone number, email address and name, and readable email bodies."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from html.parser import HTMLParser

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from pipelines.channels.base import Identity

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


def identity(item: Identity, region: str | None) -> tuple[str, str]:
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


class _TextExtractor(HTMLParser):
    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
                        "table", "ul", "ol", "section", "article", "header", "footer", "hr", "pre"})
    SKIP = frozenset({"script", "style", "head", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # HTMLParser is lenient, but hostile markup must never crash a worker
        return _SPACE.sub(" ", re.sub(r"<[^>]+>", " ", html)).strip()
    lines = [_SPACE.sub(" ", line).strip() for line in "".join(parser.parts).splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# Where a quoted earlier message starts, in the languages the fleet serves.
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
    """(the new part of an email, the quoted history and signature or None)."""
    text = text.replace("\r\n", "\n").strip()
    if provider_reply and provider_reply.strip():
        reply = provider_reply.strip()
        rest = text[len(reply):].strip() if text.startswith(reply) else None
        return reply, rest or None
    lines = text.split("\n")
    cut = len(lines)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if _QUOTE_MARKERS.match(stripped) or _SIGNATURE.match(stripped):
            cut = index
            break
        if stripped.startswith(">") and all(not rest.strip() or rest.lstrip().startswith(">")
                                            for rest in lines[index:]):
            cut = index
            break
    reply = "\n".join(lines[:cut]).strip()
    quoted = "\n".join(lines[cut:]).strip() or None
    if not reply:  # nothing but a quote: keep the whole text as the message
        return text, None
    return reply, quoted
