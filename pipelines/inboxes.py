"""Tenants and inboxes: creation, per-channel secret rules, and the webhook URL a provider is given."""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert

from db.schema import inboxes, tenants
from db.tenancy import TenantId, bind_tenant, new_tenant_id
from pipelines.crypto import SecretBox
from pipelines.errors import Refusal


class InboxConfigError(Refusal):
    """An inbox cannot be created as asked: unknown channel, missing or malformed secret."""

    code = "invalid_inbox"


def _token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class SecretSpec:
    name: str
    generate: Callable[[], str] | None = None  # None: the provider issues it, so the operator must give it
    pattern: str | None = None
    hint: str = ""
    optional: bool = False  # needed only to send replies through the channel: an inbox may receive without it


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    description: str
    secrets: tuple[SecretSpec, ...] = field(default_factory=tuple)
    basic_auth: bool = False


# A credential for a provider's send API: printable ASCII without spaces, as the providers issue them.
_CREDENTIAL = r"[\x21-\x7e]{8,4096}"

CHANNELS: dict[str, ChannelSpec] = {
    spec.name: spec
    for spec in (
        ChannelSpec("twilio", "Twilio SMS and WhatsApp", (
            SecretSpec("auth_token", hint="the Auth Token from the Twilio console"),
            SecretSpec("account_sid", pattern=r"AC[0-9a-fA-F]{32}", optional=True,
                       hint="the Account SID, to send replies"),)),
        ChannelSpec("whatsapp", "Meta WhatsApp Cloud API", (
            SecretSpec("app_secret", hint="the App Secret of the Meta app"),
            SecretSpec("verify_token", _token, r"[\x21-\x7e]{8,256}"),
            SecretSpec("access_token", pattern=_CREDENTIAL, optional=True,
                       hint="a system user's access token, to send replies"),)),
        ChannelSpec("postmark", "Postmark inbound email", (
            SecretSpec("basic_user", lambda: "postmark", r"[A-Za-z0-9._~-]{1,64}"),
            SecretSpec("basic_password", _token, r"[A-Za-z0-9._~-]{16,256}"),
            SecretSpec("server_token", pattern=_CREDENTIAL, optional=True,
                       hint="the Server API token, to send replies"),), basic_auth=True),
        ChannelSpec("mailgun", "Mailgun inbound routes", (
            SecretSpec("signing_key", hint="the HTTP webhook signing key from Mailgun"),
            SecretSpec("api_key", pattern=_CREDENTIAL, optional=True, hint="a sending API key, to send replies"),)),
        ChannelSpec("sendgrid", "SendGrid Inbound Parse", (
            SecretSpec("basic_user", lambda: "sendgrid", r"[A-Za-z0-9._~-]{1,64}"),
            SecretSpec("basic_password", _token, r"[A-Za-z0-9._~-]{16,256}"),
            SecretSpec("api_key", pattern=_CREDENTIAL, optional=True,
                       hint="an API key with Mail Send access, to send replies"),), basic_auth=True),
        ChannelSpec("telegram", "Telegram Bot API", (
            SecretSpec("secret_token", _token, r"[A-Za-z0-9_-]{1,256}"),
            SecretSpec("bot_token", pattern=r"[0-9]{1,20}:[A-Za-z0-9_-]{20,200}", optional=True,
                       hint="the bot's token from BotFather, to send replies"),)),
        ChannelSpec("api", "Signed JSON API (Standard Webhooks)", (
            SecretSpec("signing_secret", _whsec, r"whsec_[A-Za-z0-9+/]{16,}={0,2}"),)),
    )
}


def channel_spec(channel: str) -> ChannelSpec:
    try:
        return CHANNELS[channel]
    except KeyError:
        known = ", ".join(sorted(CHANNELS))
        raise InboxConfigError(f"unknown channel {channel!r}; known channels: {known}") from None


def complete_secrets(channel: str, given: Mapping[str, str]) -> dict[str, str]:
    """Validate the given secrets for `channel` and generate the ones the provider lets us choose."""
    spec = channel_spec(channel)
    names = {s.name for s in spec.secrets}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InboxConfigError(
            f"channel {channel!r} has no secret {', '.join(unknown)}; its secrets are: {', '.join(sorted(names))}"
        )
    result: dict[str, str] = {}
    for secret in spec.secrets:
        value = given.get(secret.name)
        if value is None and secret.optional:
            continue
        if value is None:
            if secret.generate is None:
                raise InboxConfigError(
                    f"channel {channel!r} needs --secret {secret.name}=VALUE ({secret.hint})"
                )
            value = secret.generate()
        if not value or (secret.pattern and not re.fullmatch(secret.pattern, value)):
            raise InboxConfigError(f"secret {secret.name!r} for channel {channel!r} is malformed")
        result[secret.name] = value
    return result


def webhook_url(base_url: str, channel: str, inbox_id: uuid.UUID, secrets_: Mapping[str, str]) -> str:
    """The URL to paste into the provider's console; Basic-auth channels carry their credentials in it."""
    base = base_url.rstrip("/")
    if channel_spec(channel).basic_auth:
        scheme, _, rest = base.partition("://")
        base = f"{scheme}://{secrets_['basic_user']}:{secrets_['basic_password']}@{rest}"
    return f"{base}/v1/webhooks/{channel}/{inbox_id}"


def create_tenant(conn: Connection, name: str, settings: Mapping[str, Any] | None = None) -> TenantId:
    name = name.strip()
    if not name or len(name) > 200:
        raise InboxConfigError("a tenant name is 1 to 200 characters")
    tenant_id = new_tenant_id()
    bind_tenant(conn, tenant_id)
    conn.execute(insert(tenants).values(id=tenant_id, name=name, settings=dict(settings or {})))
    return tenant_id


@dataclass(frozen=True)
class CreatedInbox:
    id: uuid.UUID
    tenant_id: TenantId
    channel: str
    name: str
    secrets: dict[str, str]


def create_inbox(
    conn: Connection,
    box: SecretBox,
    tenant_id: TenantId,
    channel: str,
    *,
    name: str | None = None,
    given_secrets: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> CreatedInbox:
    values = complete_secrets(channel, given_secrets or {})
    inbox_id = uuid.uuid4()
    inbox_name = name or f"{channel_spec(channel).description}"
    conn.execute(insert(inboxes).values(id=inbox_id, tenant_id=tenant_id, channel=channel, name=inbox_name,
                                        secrets=box.seal(values), settings=dict(settings or {})))
    return CreatedInbox(inbox_id, tenant_id, channel, inbox_name, values)
