"""The `api` channel: the reply is POSTed to the inbox's `reply_url`, signed like every Standard Webhooks
delivery with the inbox's own signing secret (`webhook-id`, `webhook-timestamp`, `webhook-signature`), so the
receiving system verifies it with the secret it already uses for its deliveries to us.

`webhook-id` is the reply's id, `intake:<message id>`, the same on every attempt: a receiver that dedupes on it
(as Standard Webhooks asks) never shows a reply twice. That id stays the message's `external_id`, and the
receiver's status items (`{"type": "status", "message_id": "intake:<id>", ...}`) name it. Any 2xx is taken;
408, 429 and 5xx are for later; other answers are refusals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from config import Settings
from pipelines.channels.api import signature
from pipelines.outbound.base import Outcome, ProviderRequest, Reply, Sent, by_status, clip, json_of

IDENTITY_FIELDS = {"email": "email", "phone": "phone", "external": "external_id"}


def payload(reply: Reply) -> dict[str, Any]:
    contact: dict[str, Any] = {"name": reply.contact_name}
    contact.update({field: reply.identities[kind] for kind, field in IDENTITY_FIELDS.items()
                    if kind in reply.identities})
    return {
        "type": "reply", "id": reply.external_id, "message_id": str(reply.id),
        "conversation_id": str(reply.conversation_id) if reply.conversation_id else None,
        "in_reply_to": reply.inbound.external_id if reply.inbound else None,
        "text": reply.text, "html": reply.html, "subject": reply.subject, "contact": contact,
    }


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    url, secret = reply.setting("reply_url"), reply.secret("signing_secret")
    body = payload(reply)
    raw = ProviderRequest(url=url, json=body).body()
    timestamp = str(int(time.time()))
    return ProviderRequest(url=url, json=body, headers={
        "webhook-id": reply.external_id, "webhook-timestamp": timestamp,
        "webhook-signature": signature(secret, reply.external_id, timestamp, raw),
    })


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    if 200 <= status < 300:
        return Sent("")  # the reply keeps its own id: see the module's docstring
    data = json_of(body)
    text = clip(data.get("detail") or data.get("error") or data.get("message")) if isinstance(data, dict) else ""
    return by_status(status, headers, str(status), text or clip(body.decode("utf-8", "replace"), 300))
