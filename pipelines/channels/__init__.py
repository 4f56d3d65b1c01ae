"""Channel adapters, one module per provider, each with `verify` and `parse` (see `base`), registered by name."""

from __future__ import annotations

from pipelines.channels import api, mailgun, postmark, sendgrid, telegram, twilio, whatsapp
from pipelines.channels.base import (
    Adapter,
    ChannelError,
    Delivery,
    InboundMessage,
    PayloadError,
    SignatureError,
    StatusUpdate,
    VerifyContext,
    WebhookRequest,
)

ADAPTERS: dict[str, Adapter] = {
    "twilio": Adapter(twilio.verify, twilio.parse),
    "whatsapp": Adapter(whatsapp.verify, whatsapp.parse),
    "postmark": Adapter(postmark.verify, postmark.parse),
    "mailgun": Adapter(mailgun.verify, mailgun.parse, mailgun.replay_token),
    "sendgrid": Adapter(sendgrid.verify, sendgrid.parse),
    "telegram": Adapter(telegram.verify, telegram.parse),
    "api": Adapter(api.verify, api.parse),
}

__all__ = [
    "ADAPTERS", "Adapter", "ChannelError", "Delivery", "InboundMessage", "PayloadError", "SignatureError",
    "StatusUpdate", "VerifyContext", "WebhookRequest",
]
