"""Credential scrubbing: what every log line and every stored error passes through before it leaves the process.

It lives here, below every layer, because logging is configured here (`config.logging` runs it as a structlog
processor on every event of every process, a traceback included) and the failure ledger stores error text
through the same function (`pipelines.errors.scrub` is this one), so nothing logged or stored can disagree
about what a credential looks like.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# What the scrubber hides. A traceback can quote a whole delivery, so each pattern runs in time linear in
# the text: every match attempt either succeeds and consumes what it read, or fails within a run that no
# other attempt reads again. The password of a URL ("scheme://user:password@host") is the exception,
# as a scan for its "@" could run to the end of the text from every "://": it is looked for only inside
# a word (no white space) up to the word's last "@", where that scan always ends at an "@".
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
_WORD = re.compile(r"\S+")
_SECRETS = [
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_***"),
    (re.compile(r"(?i)(password|secret|token|api[_-]?key)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1\2***"),
]


def scrub(value: str) -> str:
    """Remove anything that looks like a credential from text bound for the ledger (linear in `value`)."""
    if "://" in value:
        value = _WORD.sub(_scrub_userinfo, value)
    for pattern, replacement in _SECRETS:
        value = pattern.sub(replacement, value)
    return value


def _scrub_userinfo(word: re.Match[str]) -> str:
    text = word.group()
    end = text.rfind("@") + 1
    if not end or "://" not in text:
        return text
    return _USERINFO.sub(r"\1***@", text[:end]) + text[end:]


def scrub_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every text value of the event scrubbed (the message, `error`, a `traceback`, a
    formatted `exception`). It runs after the exception is formatted, so a traceback is text by then."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub(value)
    return event
