"""What the three email providers share: the addresses, the subject and the threading headers of a reply.

A reply answers the customer's latest message: `In-Reply-To` is its Message-ID and `References` its
references followed by its Message-ID, so the customer's mail program files the reply in the thread.
`Reply-To` is the inbox's address, so the customer's answer comes back to the inbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.outbound.base import Reply

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
MAX_REFERENCES = 20  # a long thread's References keeps its first and latest ids (RFC 5322 allows trimming)


@dataclass(frozen=True)
class Envelope:
    sender: str
    to: str
    subject: str
    headers: dict[str, str]


def envelope(reply: Reply) -> Envelope:
    sender = reply.setting("from_address")
    headers: dict[str, str] = {}
    inbound = reply.inbound
    if inbound is not None and inbound.rfc_message_id:
        own = _bracketed(inbound.rfc_message_id)
        earlier = _references(inbound.metadata)
        chain = [r for r in earlier if r != own] + [own]
        if len(chain) > MAX_REFERENCES:
            chain = chain[:1] + chain[-(MAX_REFERENCES - 1):]
        headers["In-Reply-To"] = own
        headers["References"] = " ".join(chain)
    return Envelope(sender=sender, to=reply.handle("email"), subject=subject(reply), headers=headers)


def subject(reply: Reply) -> str:
    if reply.subject:
        return header_value(reply.subject)
    original = header_value((reply.inbound.subject if reply.inbound else None) or "")
    if not original:
        return "Re: your message"
    return original if original.lower().startswith("re:") else f"Re: {original}"


def header_value(value: str) -> str:
    """A header value on one line: a customer's Message-ID or subject can never add a header of its own."""
    return _CONTROL.sub(" ", value).strip()[:998]


def _bracketed(message_id: str) -> str:
    value = header_value(message_id).replace(" ", "")
    return value if value.startswith("<") else f"<{value}>"


def _references(metadata: object) -> list[str]:
    headers = metadata.get("headers") if isinstance(metadata, dict) else None
    if not isinstance(headers, dict):
        return []
    raw = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == "references"), None)
    return [_bracketed(part) for part in str(raw).split()] if raw else []
