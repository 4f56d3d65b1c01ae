"""Pieces shared by the inbound-email providers: addresses, RFC 5322 ids and the headers worth keeping."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from email.parser import HeaderParser
from email.policy import default
from email.utils import getaddresses, parsedate_to_datetime

# Headers kept with a message: threading, and the marks of auto-replies and bulk mail.
KEPT_HEADERS = (
    "message-id", "in-reply-to", "references", "auto-submitted", "precedence", "x-autoreply",
    "x-autorespond", "x-auto-response-suppress", "list-id", "list-unsubscribe", "return-path", "date",
)
_MSGID = re.compile(r"<([^<>\s]+)>")


def address(raw: str | None) -> tuple[str | None, str | None]:
    """("Name", "email") from 'Name <email>' or a bare address."""
    if not raw:
        return None, None
    pairs = getaddresses([raw])
    if not pairs:
        return None, None
    name, email = pairs[0]
    return (name.strip() or None), (email.strip() or None)


def addresses(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(email for _, email in getaddresses([raw]) if email)


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
            kept[key] = str(value).strip()[:2000]
    return kept


def header_block(raw: str) -> list[tuple[str, str]]:
    """Name/value pairs from a raw RFC 5322 header block (SendGrid's `headers` field)."""
    parsed = HeaderParser(policy=default).parsestr(raw, headersonly=True)
    return [(name, str(value)) for name, value in parsed.items()]


def header_date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else None
