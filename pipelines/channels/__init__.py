"""Channel adapters, one module per provider, each with `verify` and `parse` (see `base`)."""

from __future__ import annotations

from types import ModuleType

from pipelines.channels import api, mailgun, postmark, sendgrid, telegram, twilio, whatsapp
from pipelines.channels.base import (
    ChannelError,
    Delivery,
    InboundMessage,
    PayloadError,
    SignatureError,
    StatusUpdate,
    VerifyContext,
    WebhookRequest,
)

ADAPTERS: dict[str, ModuleType] = {
    "twilio": twilio, "whatsapp": whatsapp, "postmark": postmark, "mailgun": mailgun,
    "sendgrid": sendgrid, "telegram": telegram, "api": api,
}

__all__ = [
    "ADAPTERS", "ChannelError", "Delivery", "InboundMessage", "PayloadError", "SignatureError", "StatusUpdate",
    "VerifyContext", "WebhookRequest",
]
