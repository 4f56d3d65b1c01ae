"""Sending one queued reply through its inbox's channel, never twice on our side.

    claim     (a short transaction)  queued, unclaimed (or claimed longer ago than the lease) -> claimed by us;
                                     the reply and its context are read in the same transaction
    call      (no transaction)       the provider's send API, with a timeout and a bounded read
    record    (a second transaction) Sent: status `sent`, the provider's id as `external_id`, the statuses that
                                     arrived early applied; Refused: `failed` with the provider's code and text
                                     and a ledger row; Retryable: the claim released, the job retries

A second job for the same reply (a duplicate enqueue, a redelivery after a worker died) finds the claim and
raises `SendInProgress` (retryable) while the claim is fresh: it comes back later and finds the reply sent, or,
if the claiming worker died before recording anything, takes the reply over once the lease
(`INTAKE_OUTBOUND_CLAIM_SECONDS`) has passed. Only that last case can send twice, when the worker died between
the provider's answer and our commit; the README says what that means per provider.

A reply that is no longer queued (sent, failed, or never an outbound row) is left alone: the job was a
duplicate. A replay from the ledger (`retry_failed`) claims a reply that failed, after its cause was fixed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson
import structlog
from sqlalchemy import Connection, Engine, text

from config import Settings
from db import direct
from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.crypto import SecretBox
from pipelines.errors import PermanentError, RetryableError
from pipelines.inboxes import webhook_url
from pipelines.outbound import api, http, mailgun, postmark, sendgrid, statuses, telegram, twilio, whatsapp
from pipelines.outbound.base import Inbound, NotConfigured, Outcome, Provider, Refused, Reply, Retryable, Sent

log = structlog.get_logger("intake.outbound")

# Spelled out, so mypy checks each module's functions against `Provider`.
PROVIDERS: dict[str, Provider] = {
    "twilio": Provider(twilio.request, twilio.answer), "whatsapp": Provider(whatsapp.request, whatsapp.answer),
    "telegram": Provider(telegram.request, telegram.answer), "postmark": Provider(postmark.request, postmark.answer),
    "mailgun": Provider(mailgun.request, mailgun.answer), "sendgrid": Provider(sendgrid.request, sendgrid.answer),
    "api": Provider(api.request, api.answer),
}

CLAIM = text("""
UPDATE messages SET send_claimed_at = clock_timestamp(), status = 'queued'
WHERE tenant_id = :t AND id = :id AND direction = 'outbound'
  AND (status = 'queued' OR (CAST(:retry_failed AS boolean) AND status = 'failed'))
  AND (send_claimed_at IS NULL OR send_claimed_at < clock_timestamp() - make_interval(secs => :lease))
RETURNING send_claimed_at
""")
STATE = text("""
SELECT status, send_claimed_at FROM messages WHERE tenant_id = :t AND id = :id AND direction = 'outbound'
""")
LOAD_REPLY = text("""
SELECT m.id, m.inbox_id, m.conversation_id, m.contact_id, m.external_id, m.subject, m.content, m.content_html,
       i.channel, i.secrets, CAST(i.settings AS text) AS settings, c.display_name
FROM messages m
JOIN inboxes i ON i.tenant_id = m.tenant_id AND i.id = m.inbox_id
LEFT JOIN contacts c ON c.tenant_id = m.tenant_id AND c.id = m.contact_id
WHERE m.tenant_id = :t AND m.id = :id
""")
IDENTITIES = text("""
SELECT kind, value FROM contact_identities WHERE tenant_id = :t AND contact_id = :contact ORDER BY created_at, id
""")
LAST_INBOUND = text("""
SELECT external_id, rfc_message_id, subject, CAST(metadata AS text) AS metadata, sent_at FROM messages
WHERE tenant_id = :t AND conversation_id = :conversation AND direction = 'inbound'
ORDER BY sent_at DESC, id DESC LIMIT 1
""")
# Only our own claim is recorded: a worker whose lease ran out and was taken over records nothing.
RECORD_SENT = text(f"""
UPDATE messages SET status = 'sent', external_id = :provider_id, send_claimed_at = NULL,
       status_error = NULL, status_updated_at = :at, sent_at = :at,
       metadata = metadata || jsonb_build_object('intake_id', CAST(:own_id AS text))
WHERE tenant_id = :t AND id = :id AND status = 'queued' AND send_claimed_at = :claimed
RETURNING {statuses.MESSAGE_COLUMNS}
""")
RECORD_FAILED = text(f"""
UPDATE messages SET status = 'failed', status_error = :error, send_claimed_at = NULL, status_updated_at = :at
WHERE tenant_id = :t AND id = :id AND status = 'queued' AND send_claimed_at = :claimed
RETURNING {statuses.MESSAGE_COLUMNS}
""")
RELEASE = text("""
UPDATE messages SET send_claimed_at = NULL
WHERE tenant_id = :t AND id = :id AND status = 'queued' AND send_claimed_at = :claimed
""")
NOW = text("SELECT clock_timestamp()")


class SendInProgress(RetryableError):
    """Another job holds the reply's claim: this one comes back later, and finds it sent or takes it over."""


class ProviderUnavailable(RetryableError):
    """The provider could not take the reply now (429, 5xx, a timeout, unreachable): the job retries."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SendRefused(PermanentError):
    """The provider refused the reply (its code and text), or the inbox cannot send it as configured."""


Ledger = Callable[[Connection, Exception], None]


@dataclass(frozen=True)
class SendResult:
    outcome: str  # sent, failed, skipped (not queued: a duplicate job)
    provider_id: str | None = None
    error: str | None = None
    early_applied: int = 0


def send(engine: Engine, settings: Settings, box: SecretBox, tenant: TenantId, message_id: uuid.UUID,
         client: httpx.Client, *, ledger: Ledger, retry_failed: bool = False,
         final_attempt: bool = False) -> SendResult:
    """Send one queued reply (see the module docstring). `ledger` writes a failure's ledger row in the
    transaction that marks the reply failed; `final_attempt` turns a retryable answer into a failure."""
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        claimed = direct.first(conn, CLAIM, {"t": tenant, "id": message_id, "retry_failed": retry_failed,
                                             "lease": settings.outbound_claim_seconds})
        if claimed is None:
            return _unclaimed(conn, tenant, message_id)
        reply = load_reply(conn, tenant, message_id, box, settings)
    claim = claimed.send_claimed_at
    outcome = deliver(reply, settings, client)
    if isinstance(outcome, Retryable) and final_attempt:
        outcome = Refused("unavailable", f"no answer after the last retry: {outcome.reason}")
    if isinstance(outcome, Retryable):
        with engine.begin() as conn:
            bind_tenant(conn, tenant)
            direct.run(conn, RELEASE, {"t": tenant, "id": message_id, "claimed": claim})
        log.info("outbound.send.retry", message_id=str(message_id), channel=reply.channel, reason=outcome.reason)
        raise ProviderUnavailable(f"{reply.channel}: {outcome.reason}", outcome.retry_after)
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        at = conn.execute(NOW).scalar_one()
        if isinstance(outcome, Sent):
            return _record_sent(conn, tenant, reply, outcome, claim, at)
        return _record_failed(conn, tenant, reply, outcome, claim, at, ledger)


def deliver(reply: Reply, settings: Settings, client: httpx.Client) -> Outcome:
    """Build the provider's request, call it, read its answer. Nothing here touches the database."""
    provider = PROVIDERS.get(reply.channel)
    if provider is None:
        return Refused("not_configured", f"no provider sends replies for channel {reply.channel!r}")
    try:
        request = provider.request(reply, settings)
    except NotConfigured as exc:
        return exc.refusal()
    if reply.channel == "api" and not settings.outbound_allow_private_networks:
        address = http.private_address(request.url)
        if address is not None:
            return Refused("private_network", f"reply_url resolves to {address}, a non-public address "
                                              "(INTAKE_OUTBOUND_ALLOW_PRIVATE_NETWORKS)")
    outcome: Outcome = http.call(client, request, provider.answer, settings.outbound_max_response_bytes)
    return _redacted(outcome, reply.secrets)


def _redacted(outcome: Outcome, secrets: dict[str, str] | Any) -> Outcome:
    """A provider's words without the inbox's secrets (an answer may quote the URL, and Telegram's holds the
    bot's token): they are stored in `status_error` and the ledger."""
    values = [v for v in secrets.values() if len(v) >= 8]
    if isinstance(outcome, Refused):
        text_, code = outcome.text, outcome.code
        for value in values:
            text_, code = text_.replace(value, "***"), code.replace(value, "***")
        return Refused(code, text_)
    if isinstance(outcome, Retryable):
        reason = outcome.reason
        for value in values:
            reason = reason.replace(value, "***")
        return Retryable(reason, outcome.retry_after)
    return outcome


def load_reply(conn: Connection, tenant: TenantId, message_id: uuid.UUID, box: SecretBox,
               settings: Settings) -> Reply:
    row = direct.first(conn, LOAD_REPLY, {"t": tenant, "id": message_id})
    assert row is not None  # claimed in this same transaction
    identities: dict[str, str] = {}
    if row.contact_id is not None:
        for identity in direct.rows(conn, IDENTITIES, {"t": tenant, "contact": row.contact_id}):
            identities.setdefault(identity.kind, identity.value)
    inbound = None
    if row.conversation_id is not None:
        last = direct.first(conn, LAST_INBOUND, {"t": tenant, "conversation": row.conversation_id})
        if last is not None:
            inbound = Inbound(last.external_id, last.rfc_message_id, last.subject,
                              orjson.loads(last.metadata) if last.metadata else {}, last.sent_at)
    secrets = box.open(row.secrets)
    base = settings.public_base_url or "http://127.0.0.1:8000"
    return Reply(
        id=row.id, tenant_id=tenant, inbox_id=row.inbox_id, conversation_id=row.conversation_id,
        channel=row.channel, external_id=row.external_id, text=row.content, html=row.content_html,
        subject=row.subject, secrets=secrets, settings=orjson.loads(row.settings) if row.settings else {},
        identities=identities, contact_name=row.display_name, inbound=inbound,
        webhook_url=webhook_url(base, row.channel, row.inbox_id, secrets),
    )


def _unclaimed(conn: Connection, tenant: TenantId, message_id: uuid.UUID) -> SendResult:
    state = direct.first(conn, STATE, {"t": tenant, "id": message_id})
    if state is not None and state.status == "queued":
        raise SendInProgress(f"reply {message_id} is being sent by another job (claimed {state.send_claimed_at})")
    log.info("outbound.send.skipped", message_id=str(message_id), status=state.status if state else None)
    return SendResult("skipped")


def _record_sent(conn: Connection, tenant: TenantId, reply: Reply, outcome: Sent, claim: datetime,
                 at: datetime) -> SendResult:
    provider_id = outcome.provider_id or reply.external_id
    statuses.lock(conn, reply.inbox_id, provider_id)
    row = direct.first(conn, RECORD_SENT, {"t": tenant, "id": reply.id, "provider_id": provider_id, "at": at,
                                           "own_id": reply.external_id, "claimed": claim})
    if row is None:  # our lease ran out and another job took the reply over: it records its own answer
        log.warning("outbound.send.superseded", message_id=str(reply.id), provider_id=provider_id)
        return SendResult("skipped", provider_id)
    applied = [statuses.status_change(row), *statuses.apply_early(conn, tenant, reply.inbox_id, provider_id)]
    changes.record(conn, tenant, applied)
    log.info("outbound.send.sent", message_id=str(reply.id), channel=reply.channel, early=len(applied) - 1)
    return SendResult("sent", provider_id, early_applied=len(applied) - 1)


def _record_failed(conn: Connection, tenant: TenantId, reply: Reply, outcome: Refused, claim: datetime,
                   at: datetime, ledger: Ledger) -> SendResult:
    row = direct.first(conn, RECORD_FAILED, {"t": tenant, "id": reply.id, "error": outcome.error, "at": at,
                                             "claimed": claim})
    if row is None:
        log.warning("outbound.send.superseded", message_id=str(reply.id))
        return SendResult("skipped", error=outcome.error)
    ledger(conn, SendRefused(f"{reply.channel} refused reply {reply.id}: {outcome.error}"))
    changes.record(conn, tenant, [statuses.status_change(row)])
    log.warning("outbound.send.failed", message_id=str(reply.id), channel=reply.channel, code=outcome.code)
    return SendResult("failed", error=outcome.error)
