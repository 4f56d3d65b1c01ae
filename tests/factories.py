"""Rows for tests, written as a provider or another application would leave them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import Connection, text

from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox, create_inbox, create_tenant


@dataclass
class TenantRows:
    tenant_id: TenantId
    inbox: CreatedInbox
    ids: dict[str, uuid.UUID]


def _insert(conn: Connection, table: str, values: dict[str, object]) -> uuid.UUID:
    columns = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    row = conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params}) RETURNING id"), values).one()
    return uuid.UUID(str(row[0]))


def seed_tenant(conn: Connection, box: SecretBox, name: str, dim: int = 384) -> TenantRows:
    """One row in every tenant-scoped table, all belonging to a new tenant."""
    tenant = create_tenant(conn, name)
    inbox = create_inbox(conn, box, tenant, "api")
    bind_tenant(conn, tenant)
    now = datetime.now(UTC)
    t = {"tenant_id": tenant}
    ids: dict[str, uuid.UUID] = {"inboxes": inbox.id}
    ids["teams"] = _insert(conn, "teams", {**t, "name": "Billing"})
    ids["contacts"] = _insert(conn, "contacts", {**t, "display_name": f"{name} customer"})
    ids["contact_identities"] = _insert(conn, "contact_identities", {
        **t, "contact_id": ids["contacts"], "kind": "email", "value": f"{uuid.uuid4().hex}@example.com"})
    other = _insert(conn, "contacts", {**t, "display_name": f"{name} customer"})
    ids["contact_duplicate_candidates"] = _insert(conn, "contact_duplicate_candidates", {
        **t, "contact_id": min(ids["contacts"], other), "candidate_id": max(ids["contacts"], other),
        "score": 90, "reason": "same name"})
    ids["contact_merges"] = _insert(conn, "contact_merges", {
        **t, "survivor_id": ids["contacts"], "merged_id": uuid.uuid4(), "reason": "test"})
    ids["conversations"] = _insert(conn, "conversations", {
        **t, "inbox_id": inbox.id, "contact_id": ids["contacts"]})
    ids["inbound_events"] = _insert(conn, "inbound_events", {
        **t, "inbox_id": inbox.id, "channel": "api", "dedupe_key": uuid.uuid4().hex, "body": b"{}"})
    ids["messages"] = _insert(conn, "messages", {
        **t, "inbox_id": inbox.id, "conversation_id": ids["conversations"], "contact_id": ids["contacts"],
        "direction": "inbound", "external_id": uuid.uuid4().hex, "content": "hello", "sent_at": now})
    ids["ai_classifications"] = _insert(conn, "ai_classifications", {
        **t, "message_id": ids["messages"], "prompt_version": "v1", "category": "billing",
        "priority": "normal", "sentiment": "neutral", "language": "en", "confidence": 0.5,
        "reasoning": "test", "provider": "local", "model": "test"})
    ids["ai_drafts"] = _insert(conn, "ai_drafts", {
        **t, "message_id": ids["messages"], "conversation_id": ids["conversations"], "prompt_version": "v1",
        "content": "Hi", "confidence": 0.5, "provider": "local", "model": "test"})
    ids["ai_corrections"] = _insert(conn, "ai_corrections", {
        **t, "message_id": ids["messages"], "category": "billing", "priority": "high", "actor": "test"})
    ids["ai_examples"] = _insert(conn, "ai_examples", {
        **t, "message_id": ids["messages"], "text": "hello", "category": "billing", "source": "correction"})
    ids["ai_models"] = _insert(conn, "ai_models", {
        **t, "version": 1, "format": "lexical-svm-1", "examples": 1, "categories": 2, "model": b"x"})
    ids["knowledge_documents"] = _insert(conn, "knowledge_documents", {
        **t, "source": "faq.md", "title": "FAQ", "content_hash": "x", "embedding_model": "m",
        "embedding_dim": dim})
    ids["knowledge_chunks"] = _insert(conn, "knowledge_chunks", {
        **t, "document_id": ids["knowledge_documents"], "ordinal": 0, "content": "Refunds take 5 days",
        "embedding": "[" + ",".join(["0.1"] * dim) + "]", "embedding_model": "m"})
    ids["ai_usage"] = _insert(conn, "ai_usage", {**t, "feature": "classify", "provider": "local", "model": "m"})
    ids["budget_alerts"] = _insert(conn, "budget_alerts", {
        **t, "month": now.date().replace(day=1), "threshold": 80, "spent_usd": 8, "budget_usd": 10})
    ids["job_failures"] = _insert(conn, "job_failures", {
        **t, "queue": "ingest", "actor": "ingest_events", "message_id": uuid.uuid4().hex, "message": "{}",
        "exception_type": "ValueError", "exception_message": "test"})
    ids["audit_logs"] = _insert(conn, "audit_logs", {
        **t, "actor": "test", "action": "test", "subject_type": "contact", "subject_id": "x"})
    ids["ai_usage_monthly"] = _insert(conn, "ai_usage_monthly", {
        **t, "month": now.date().replace(day=1), "feature": "classify", "provider": "local", "model": "m"})
    ids["sla_policies"] = _insert(conn, "sla_policies", {**t, "priority": "normal", "first_response_minutes": 60})
    ids["ai_personas"] = _insert(conn, "ai_personas", {**t, "name": "Aino", "is_default": True})
    ids["api_keys"] = _insert(conn, "api_keys", {
        **t, "name": "crm", "prefix": "ik_" + uuid.uuid4().hex[:9], "key_hash": b"x" * 32, "created_by": "test"})
    # The feed's head is keyed by its tenant; the event is recorded as the fleet records one.
    changes.record(conn, tenant, [changes.Change("contact.created", {"contact": {"id": str(ids["contacts"])}},
                                                 subject_id=ids["contacts"])])
    ids["change_events"] = uuid.UUID(str(conn.execute(text("SELECT id FROM change_events")).scalar_one()))
    ids["change_feed_heads"] = tenant
    ids["webhook_endpoints"] = _insert(conn, "webhook_endpoints", {
        **t, "url": "https://hooks.example.com/intake", "secret": box.seal({"secret": "whsec_dGVzdA=="})})
    ids["webhook_attempts"] = _insert(conn, "webhook_attempts", {
        **t, "endpoint_id": ids["webhook_endpoints"], "event_seq": 1, "event_id": ids["change_events"]})
    ids["early_statuses"] = _insert(conn, "early_statuses", {
        **t, "inbox_id": inbox.id, "external_id": uuid.uuid4().hex, "status": "delivered", "at": now})
    ids["replay_tokens"] = uuid.uuid4()  # keyed by its token, which has no `id` column to return
    conn.execute(text("INSERT INTO replay_tokens (tenant_id, inbox_id, token, dedupe_key, body_digest) "
                      "VALUES (:tenant_id, :inbox_id, :token, 'x', sha256('x'))"),
                 {**t, "inbox_id": inbox.id, "token": str(ids["replay_tokens"])})
    return TenantRows(tenant, inbox, ids)


def new_inbox(engine: object, channel: str, *, secrets: dict[str, str] | None = None,
              settings: dict[str, object] | None = None, tenant_name: str = "Test tenant") -> CreatedInbox:
    """A new tenant with one inbox of `channel`; provider-issued secrets get test values."""
    import os

    from sqlalchemy import Engine

    assert isinstance(engine, Engine)
    issued = {"twilio": {"auth_token": "twilio-auth-token"}, "whatsapp": {"app_secret": "meta-app-secret"},
              "mailgun": {"signing_key": "key-mailgun-signing"}}
    with engine.begin() as conn:
        tenant = create_tenant(conn, tenant_name)
        return create_inbox(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), tenant, channel,
                            given_secrets={**issued.get(channel, {}), **(secrets or {})}, settings=settings)


def deliver(engine: object, inbox: CreatedInbox, body: bytes, content_type: str, *,
            headers: dict[str, str] | None = None, policy: object = None) -> object:
    """Store an event as the ingress would and run the ingest pipeline on it, in one transaction (with the
    changes it made recorded in the feed, as the ingest actor does)."""
    from datetime import timedelta

    from sqlalchemy import Engine

    from pipelines.channels import ADAPTERS, WebhookRequest
    from pipelines.ingest import IngestPolicy, ingest_events

    assert isinstance(engine, Engine)
    all_headers = {"content-type": content_type, **(headers or {})}
    request = WebhookRequest(method="POST", url="https://hooks.example.com/x", headers=all_headers, body=body)
    key = ADAPTERS[inbox.channel].parse(request).dedupe_key
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        event_id = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body) "
            "VALUES (:t, :i, :c, :k, :ct, CAST(:h AS jsonb), :b) "
            "ON CONFLICT (tenant_id, inbox_id, dedupe_key) DO UPDATE SET dedupe_key = EXCLUDED.dedupe_key "
            "RETURNING id"),
            {"t": inbox.tenant_id, "i": inbox.id, "c": inbox.channel, "k": key, "ct": content_type,
             "h": orjson.dumps(all_headers).decode(), "b": body}).scalar_one()
        return ingest_events(conn, inbox.tenant_id, [event_id],
                             policy or IngestPolicy(reopen_window=timedelta(hours=72)))
