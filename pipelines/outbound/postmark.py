"""Postmark: `POST /email` with the server token in `X-Postmark-Server-Token`, a JSON message whose threading
headers go in `Headers` (a list of Name/Value pairs). The answer is 200 with `MessageID` and `ErrorCode` 0;
a refusal is 422 (or 401 for a bad token) with `{"ErrorCode", "Message"}`: 300 an invalid request, 406 an
inactive recipient (bounced or unsubscribed), 10 a bad token. 429 and 5xx are for later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import Settings
from pipelines.outbound.base import Outcome, ProviderRequest, Refused, Reply, Sent, by_status, clip, json_of, obj
from pipelines.outbound.email import envelope


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    token = reply.secret("server_token")
    mail = envelope(reply)
    payload: dict[str, Any] = {
        "From": mail.sender, "To": mail.to, "ReplyTo": mail.sender, "Subject": mail.subject,
        "TextBody": reply.text, "MessageStream": "outbound",
        "Headers": [{"Name": k, "Value": v} for k, v in mail.headers.items()],
    }
    if reply.html:
        payload["HtmlBody"] = reply.html
    return ProviderRequest(url=f"{settings.postmark_api_base.rstrip('/')}/email", json=payload,
                           headers={"X-Postmark-Server-Token": token, "Accept": "application/json"})


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    data = obj(json_of(body))
    code = data.get("ErrorCode")
    if status == 200 and code in (0, None):
        if data.get("MessageID"):
            return Sent(str(data["MessageID"]))
        return Refused("bad_answer", "HTTP 200 without a MessageID")
    return by_status(status, headers, str(code) if code is not None else "", clip(data.get("Message")))
