"""What every provider module shares: the reply as a provider needs it, the request it builds, and the three
ways an answer can end.

A provider module is two functions. `request(reply, settings)` builds the HTTP request from the stored reply,
the conversation's inbound context (who the customer is, what they last wrote, where they wrote to) and the
inbox's secrets and settings. `answer(status, headers, body)` reads the provider's answer as one of:

    Sent(provider_id)          the provider took the message; its id is what status callbacks name
    Retryable(reason, after)   not now (429, 5xx, a timeout, the provider's own "try later" codes)
    Refused(code, text)        never as asked (an invalid number, outside WhatsApp's 24-hour window, a bot
                               the user blocked, any other 4xx): retrying cannot help until someone acts

A missing credential or setting is a `NotConfigured` refusal raised while building the request, so an inbox
that can only receive fails its replies clearly (and replayably, once the secret is set) instead of sending
half a request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from config import Settings
from pipelines.errors import PermanentError, escaped


@dataclass(frozen=True)
class Inbound:
    """The customer's latest message in the conversation: what a reply answers and threads under."""

    external_id: str
    rfc_message_id: str | None
    subject: str | None
    metadata: Mapping[str, Any]
    sent_at: datetime


@dataclass(frozen=True)
class Reply:
    """A queued outbound message with everything a provider needs to send it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    inbox_id: uuid.UUID
    conversation_id: uuid.UUID | None
    channel: str
    external_id: str  # ours until the provider answers: 'intake:<message id>'
    text: str
    html: str | None
    subject: str | None
    secrets: Mapping[str, str]
    settings: Mapping[str, Any]
    identities: Mapping[str, str]  # the contact's first handle of each kind (phone, email, telegram, external)
    contact_name: str | None
    inbound: Inbound | None
    webhook_url: str  # the inbox's own webhook URL: Twilio posts status callbacks to it

    def secret(self, name: str) -> str:
        value = self.secrets.get(name)
        if not value:
            raise NotConfigured(f"the {self.channel} inbox has no '{name}' secret to send with: "
                                f"set it with `intake inbox rotate-secrets {self.inbox_id} --secret {name}=...`")
        return value

    def setting(self, name: str) -> str:
        value = self.settings.get(name)
        if not value:
            raise NotConfigured(f"the {self.channel} inbox has no '{name}' setting to send with: "
                                f"set it with `intake inbox update {self.inbox_id}`")
        return str(value)

    def handle(self, kind: str) -> str:
        value = self.identities.get(kind)
        if not value:
            raise NotConfigured(f"the contact has no {kind} to send a {self.channel} reply to")
        return value


@dataclass(frozen=True)
class ProviderRequest:
    """One HTTP request to a provider: a JSON body, or a form, never both."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    form: tuple[tuple[str, str], ...] | None = None
    auth: tuple[str, str] | None = None  # HTTP Basic

    def body(self) -> bytes:
        return orjson.dumps(self.json) if self.json is not None else b""


@dataclass(frozen=True)
class Sent:
    provider_id: str


@dataclass(frozen=True)
class Retryable:
    reason: str
    retry_after: float | None = None  # seconds, when the provider said


@dataclass(frozen=True)
class Refused:
    code: str
    text: str

    @property
    def error(self) -> str:
        """`messages.status_error`: the provider's code and its own words, as PostgreSQL text can hold them."""
        return escaped(f"{self.code}: {self.text}")[:2000]


Outcome = Sent | Retryable | Refused


class NotConfigured(PermanentError):
    """The inbox lacks a secret or setting that sending needs, or the contact a handle to send to."""

    def refusal(self) -> Refused:
        return Refused("not_configured", str(self))


@dataclass(frozen=True)
class Provider:
    """A provider module's two functions, registered by channel in `pipelines.outbound.send.PROVIDERS`:
    mypy checks every module against this shape there."""

    request: Callable[[Reply, Settings], ProviderRequest]
    answer: Callable[[int, Mapping[str, str], bytes], Outcome]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a `Retry-After` header (a number or an HTTP date), capped at an hour; None when absent."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - datetime.now().timestamp()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 3600.0))


def json_of(body: bytes) -> Any:
    """The answer's JSON, or None when it is not JSON (a proxy's HTML error page, a truncated body)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def obj(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one: a provider's answer is read field by field."""
    return value if isinstance(value, dict) else {}


def by_status(status: int, headers: Mapping[str, str], code: str, text: str) -> Outcome:
    """The usual reading of a non-success answer: 408, 429 and 5xx are for later, other 4xx are refusals."""
    if status in (408, 429) or status >= 500:
        return Retryable(f"{status} {code}: {text}".strip()[:500], retry_after(headers))
    return Refused(code or str(status), text or f"HTTP {status}")


def clip(value: Any, limit: int = 500) -> str:
    return str(value if value is not None else "")[:limit]
