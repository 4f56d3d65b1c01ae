"""Meta WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages` with the access token as a bearer
token, a text message to the customer's WhatsApp id (E.164 without '+'), in reply (`context`) to their last
message. Free-form text is allowed only within 24 hours of the customer's last message: outside it Meta
answers error 131047 (re-engagement), a refusal until the customer writes again. The answer is
`{"messages": [{"id": "wamid..."}]}`; an error is `{"error": {"message", "type", "code", "error_data",
"fbtrace_id"}}`, some of whose codes mean "later" whatever the HTTP status (rate limits, a temporary outage)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import Settings
from pipelines.outbound.base import (
    Outcome,
    ProviderRequest,
    Refused,
    Reply,
    Retryable,
    Sent,
    by_status,
    clip,
    json_of,
    obj,
    retry_after,
)

# Throttling (4, 80007, 130429, 131048, 131056), temporary errors (1, 2, 17) and Meta's own trouble
# (131000 something went wrong, 131016 service unavailable): try again later.
RETRY_CODES = frozenset({1, 2, 4, 17, 80007, 130429, 131000, 131016, 131048, 131056})


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    token, number_id = reply.secret("access_token"), reply.setting("phone_number_id")
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": reply.handle("phone").lstrip("+"), "type": "text",
        "text": {"preview_url": False, "body": reply.text},
    }
    if reply.inbound is not None and reply.inbound.external_id.startswith("wamid."):
        payload["context"] = {"message_id": reply.inbound.external_id}
    return ProviderRequest(
        url=f"{settings.meta_api_base.rstrip('/')}/{settings.meta_api_version}/{number_id}/messages",
        headers={"Authorization": f"Bearer {token}"}, json=payload,
    )


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    data = obj(json_of(body))
    if 200 <= status < 300:
        messages = data.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
            return Sent(str(messages[0]["id"]))
        return Refused("bad_answer", f"HTTP {status} without a message id")
    error = obj(data.get("error"))
    code = error.get("code")
    details = obj(error.get("error_data")).get("details")
    text = clip(error.get("message")) + (f" ({clip(details, 300)})" if details else "")
    if isinstance(code, int) and code in RETRY_CODES:
        return Retryable(f"{status} {code}: {text}"[:500], retry_after(headers))
    return by_status(status, headers, str(code) if code is not None else "", text)
