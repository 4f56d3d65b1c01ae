"""SendGrid v3 Mail Send: `POST /v3/mail/send` with the API key as a bearer token, one personalization to the
customer, `reply_to` the inbox's address, the threading headers in `headers`. The answer is 202 with an empty
body and the message's id in `X-Message-Id`; an error is `{"errors": [{"message", "field", "help"}]}` (400 a
request SendGrid refuses, 401 a bad key, 403 a sender not verified, 413 too large); 429 and 5xx are for later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import Settings
from pipelines.outbound.base import Outcome, ProviderRequest, Refused, Reply, Sent, by_status, clip, json_of
from pipelines.outbound.email import envelope


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    key = reply.secret("api_key")
    mail = envelope(reply)
    content = [{"type": "text/plain", "value": reply.text}]
    if reply.html:
        content.append({"type": "text/html", "value": reply.html})
    payload: dict[str, Any] = {
        "personalizations": [{"to": [{"email": mail.to}]}],
        "from": {"email": mail.sender}, "reply_to": {"email": mail.sender},
        "subject": mail.subject, "content": content,
    }
    if mail.headers:
        payload["headers"] = mail.headers
    return ProviderRequest(url=f"{settings.sendgrid_api_base.rstrip('/')}/v3/mail/send", json=payload,
                           headers={"Authorization": f"Bearer {key}"})


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    if status in (200, 202):
        message_id = headers.get("x-message-id")
        if message_id:
            return Sent(message_id)
        return Refused("bad_answer", f"HTTP {status} without an X-Message-Id")
    data = json_of(body)
    errors = data.get("errors") if isinstance(data, dict) else None
    first: dict[str, Any] = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    text = clip(first.get("message"))
    if first.get("field"):
        text += f" (field {clip(first['field'], 100)})"
    return by_status(status, headers, str(status), text)
