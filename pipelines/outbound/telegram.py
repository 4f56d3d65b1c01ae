"""Telegram Bot API `sendMessage`: `POST /bot<token>/sendMessage` with the chat's id and the text, replying
(`reply_parameters`) to the customer's last message when the bot has it, and sending anyway when it is gone.
The answer is `{"ok": true, "result": {"message_id", "chat": {"id"}}}`; an error is `{"ok": false,
"error_code", "description", "parameters"?}`: 429 carries `parameters.retry_after`, 403 means the user blocked
the bot (or the chat is closed to it), 400 a chat or text Telegram refuses. Telegram reports no delivery
statuses: a reply it took stays `sent`. Its id, like an inbound message's, is `<chat id>:<message id>`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import Settings
from pipelines.outbound.base import (
    NotConfigured,
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
)


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    token = reply.secret("bot_token")
    if reply.inbound is None or ":" not in reply.inbound.external_id:
        raise NotConfigured("no inbound Telegram message tells which chat to reply in")
    chat, _, message = reply.inbound.external_id.rpartition(":")
    payload: dict[str, Any] = {"chat_id": int(chat) if chat.lstrip("-").isdigit() else chat, "text": reply.text}
    if message.isdigit():
        payload["reply_parameters"] = {"message_id": int(message), "allow_sending_without_reply": True}
    return ProviderRequest(url=f"{settings.telegram_api_base.rstrip('/')}/bot{token}/sendMessage", json=payload)


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    data = obj(json_of(body))
    if status == 200 and data.get("ok") is True:
        result = obj(data.get("result"))
        chat = obj(result.get("chat"))
        if result.get("message_id") is not None and chat.get("id") is not None:
            return Sent(f"{chat['id']}:{result['message_id']}")
        return Refused("bad_answer", "ok without a message_id")
    code = data.get("error_code", status)
    text = clip(data.get("description"))
    wait = obj(data.get("parameters")).get("retry_after")
    if isinstance(wait, int | float) and not isinstance(wait, bool):
        return Retryable(f"{code}: {text}"[:500], max(0.0, min(float(wait), 3600.0)))
    return by_status(status, headers, str(code), text)
