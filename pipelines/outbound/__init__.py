"""Replies go out through the channel they answer: one module per provider behind `base.Provider`, the
network in `http`, the send flow (claim, call, record) in `send`, delivery statuses in `statuses`."""

from pipelines.outbound.base import Inbound, NotConfigured, Outcome, ProviderRequest, Refused, Reply, Retryable, Sent
from pipelines.outbound.send import (
    PROVIDERS,
    ProviderUnavailable,
    SendInProgress,
    SendRefused,
    SendResult,
    deliver,
    send,
)

__all__ = [
    "PROVIDERS", "Inbound", "NotConfigured", "Outcome", "ProviderRequest", "ProviderUnavailable", "Refused",
    "Reply", "Retryable", "SendInProgress", "SendRefused", "SendResult", "Sent", "deliver", "send",
]
