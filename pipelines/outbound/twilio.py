"""Twilio Messages API: a form POST to /2010-04-01/Accounts/{AccountSid}/Messages.json, Basic auth with the
Account SID and Auth Token. `From` is the number the customer wrote to (a WhatsApp sender keeps its
`whatsapp:` prefix), `StatusCallback` the inbox's webhook URL, so delivery statuses come back through the
ingress like any other delivery. The answer is 201 with the message's `sid`; an error is
`{"code", "message", "status"}` (21211: the 'To' number is not valid; 20429: too many requests)."""

from __future__ import annotations

from collections.abc import Mapping

from config import Settings
from pipelines.outbound.base import (
    NotConfigured,
    Outcome,
    ProviderRequest,
    Refused,
    Reply,
    Sent,
    by_status,
    clip,
    json_of,
    obj,
)

RETRY_CODES = frozenset({20429, 20500, 20503})  # too many requests, internal error, service unavailable


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    sid, token = reply.secret("account_sid"), reply.secret("auth_token")
    recipients = reply.inbound.metadata.get("recipients") if reply.inbound else None
    if not recipients or not isinstance(recipients, list) or not recipients[0]:
        raise NotConfigured("no inbound message tells which number the customer wrote to (Twilio's 'From')")
    sender = str(recipients[0])
    whatsapp = sender.startswith("whatsapp:")
    to = ("whatsapp:" if whatsapp else "") + reply.handle("phone")
    return ProviderRequest(
        url=f"{settings.twilio_api_base.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json",
        form=(("To", to), ("From", sender), ("Body", reply.text), ("StatusCallback", reply.webhook_url)),
        auth=(sid, token),
    )


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    data = obj(json_of(body))
    if status in (200, 201):
        sid = data.get("sid")
        if isinstance(sid, str) and sid:
            return Sent(sid)
        return Refused("bad_answer", f"HTTP {status} without a message sid")
    code = data.get("code")
    text = clip(data.get("message"))
    if isinstance(code, int) and code in RETRY_CODES:
        return by_status(429 if code == 20429 else 503, headers, str(code), text)
    return by_status(status, headers, str(code) if code is not None else "", text)
