"""The data contract, declared once: every table, column, key, check and index the migrations create.

Migrations 0001 onwards build the database with hand-written DDL; this module states the same tables as
SQLAlchemy Core `Table`s, so a reader learns a table's columns in one place, another Python application can
import them to read the tables (`from db.schema import messages`), and Alembic compares them with a migrated
database (`tests/db/test_schema.py` fails on any drift). Row-level security, roles, grants and SQL functions are
not tables and stay in the migrations.

Constraint names follow PostgreSQL's own defaults (`<table>_pkey`, `<table>_<columns>_key`,
`<table>_<columns>_fkey`, `<table>_<column>_check`), which the migrations relied on by not naming them.

The width of `knowledge_chunks.embedding` is fixed when migration 0001 runs (`INTAKE_EMBEDDING_DIM`):
`metadata_for(dim)` builds the tables for any width; the module-level tables are built for
`DEFAULT_EMBEDDING_DIM`, which is right for reading every column but that one's declared width.
"""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL, TSVECTOR, UUID
from sqlalchemy.schema import conv

DEFAULT_EMBEDDING_DIM = 384

NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "ck": "%(table_name)s_%(constraint_name)s_check",
}

NOW = text("now()")
EMPTY_OBJECT = text("'{}'::jsonb")


def _id() -> Column[object]:
    return Column("id", UUID, primary_key=True, server_default=text("gen_random_uuid()"))


def _tenant_id(*, nullable: bool = False) -> Column[object]:
    return Column("tenant_id", UUID, nullable=nullable)


def _at(name: str, *, default: bool = True) -> Column[object]:
    """A timestamptz column; the ones with a default are NOT NULL and default to the transaction's time."""
    if default:
        return Column(name, DateTime(timezone=True), nullable=False, server_default=NOW)
    return Column(name, DateTime(timezone=True))


def _text(name: str, *, default: str | None = None) -> Column[object]:
    server_default = None if default is None else text(f"'{default}'::text")
    return Column(name, Text, nullable=False, server_default=server_default)


def _count(name: str, *, default: int = 0) -> Column[object]:
    return Column(name, Integer, nullable=False, server_default=text(str(default)))


def _one_of(column: str, *values: str) -> CheckConstraint:
    quoted = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=column)


def _references_tenants() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE")


def _tenant_fk(column: str, table: str, *, ondelete: str | None = "CASCADE") -> ForeignKeyConstraint:
    """A reference inside one tenant: (tenant_id, column) points at (tenant_id, id) of `table`."""
    return ForeignKeyConstraint(["tenant_id", column], [f"{table}.tenant_id", f"{table}.id"], ondelete=ondelete)


def _tenancy(md: MetaData) -> None:
    Table(
        "tenants", md,
        _id(),
        Column("name", Text, nullable=False),
        Column("settings", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        _at("created_at"),
        # A disabled tenant's inboxes refuse deliveries (migration 0011).
        _at("disabled_at", default=False),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name"),
    )
    inboxes = Table(
        "inboxes", md,
        _id(), _tenant_id(),
        _text("channel"), _text("name"), _text("secrets"),
        Column("settings", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        Column("enabled", Boolean, nullable=False, server_default=text("true")),
        _at("created_at"),
        # After a rotation the old secrets (sealed) verify too, until then (migration 0011).
        Column("previous_secrets", Text),
        _at("previous_secrets_until", default=False),
        Column("persona_id", UUID),
        _references_tenants(),
        UniqueConstraint("tenant_id", "id"),
        _tenant_fk("persona_id", "ai_personas", ondelete="SET NULL (persona_id)"),
        _one_of("channel", "twilio", "whatsapp", "postmark", "mailgun", "sendgrid", "telegram", "api"),
    )
    Index("inboxes_tenant_idx", inboxes.c.tenant_id)
    Table(
        "teams", md,
        _id(), _tenant_id(),
        _text("name"), _text("description", default=""),
        Column("keywords", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
        _at("created_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "name"),
        UniqueConstraint("tenant_id", "id"),
    )
    personas = Table(
        "ai_personas", md,
        _id(), _tenant_id(),
        _text("name"), _text("tone", default=""), _text("system_prompt", default=""),
        Column("language", Text), Column("model", Text), Column("temperature", REAL),
        Column("is_default", Boolean, nullable=False, server_default=text("false")),
        _at("created_at"), _at("updated_at"),
        # What reaches the provider beside model and temperature; an inactive persona drafts nothing (0021).
        Column("max_tokens", Integer),
        Column("active", Boolean, nullable=False, server_default=text("true")),
        _references_tenants(),
        UniqueConstraint("tenant_id", "name"),
        UniqueConstraint("tenant_id", "id"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name"),
        CheckConstraint("length(language) = 2", name="language"),
        CheckConstraint("temperature BETWEEN 0 AND 2", name="temperature"),
        CheckConstraint("max_tokens BETWEEN 1 AND 32768", name="max_tokens"),
    )
    Index("ai_personas_one_default_idx", personas.c.tenant_id, unique=True, postgresql_where=text("is_default"))


def _contacts(md: MetaData) -> None:
    contacts = Table(
        "contacts", md,
        _id(), _tenant_id(),
        Column("display_name", Text),
        Column("merged_into_id", UUID),
        _at("created_at"), _at("updated_at"),
        # An erased person's contact stays as a tombstone: no name, no identities (migration 0012).
        _at("erased_at", default=False),
        # The name as duplicate detection compares it: an equality on it can use an index under row-level
        # security, which lower(display_name) cannot (migration 0013).
        Column("display_name_key", Text, Computed("lower(display_name)", persisted=True)),
        _references_tenants(),
        UniqueConstraint("tenant_id", "id"),
        # Led by the tenant, as every key here is (Citus distributes by it; migration 0019).
        _tenant_fk("merged_into_id", "contacts", ondelete="SET NULL (merged_into_id)"),
    )
    Index("contacts_tenant_created_idx", contacts.c.tenant_id, contacts.c.created_at)
    Index("contacts_tenant_name_key_idx", contacts.c.tenant_id, contacts.c.display_name_key)
    identities = Table(
        "contact_identities", md,
        _id(), _tenant_id(),
        Column("contact_id", UUID, nullable=False),
        _text("kind"), _text("value"),
        _at("created_at"),
        UniqueConstraint("tenant_id", "kind", "value"),
        _tenant_fk("contact_id", "contacts"),
        _one_of("kind", "phone", "email", "telegram", "external"),
        CheckConstraint("length(value) > 0", name="value"),
    )
    Index("contact_identities_contact_idx", identities.c.contact_id)
    Table(
        "contact_merges", md,
        _id(), _tenant_id(),
        Column("survivor_id", UUID, nullable=False),
        Column("merged_id", UUID, nullable=False),
        _text("reason"),
        Column("details", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        _at("created_at"),
        _references_tenants(),
        _tenant_fk("survivor_id", "contacts"),
    )
    Table(
        "contact_duplicate_candidates", md,
        _id(), _tenant_id(),
        Column("contact_id", UUID, nullable=False),
        Column("candidate_id", UUID, nullable=False),
        Column("score", REAL, nullable=False),
        _text("reason"), _text("status", default="open"),
        _at("created_at"),
        # A pair is stored once, in one order.
        CheckConstraint("contact_id < candidate_id", name=conv("contact_duplicate_candidates_check")),
        # PostgreSQL cut the name at 63 characters.
        UniqueConstraint("tenant_id", "contact_id", "candidate_id",
                         name=conv("contact_duplicate_candidates_tenant_id_contact_id_candidate_key")),
        _tenant_fk("contact_id", "contacts"),
        _tenant_fk("candidate_id", "contacts"),
        _one_of("status", "open", "merged", "dismissed"),
    )


def _conversations(md: MetaData) -> None:
    conversations = Table(
        "conversations", md,
        _id(), _tenant_id(),
        Column("inbox_id", UUID, nullable=False),
        Column("contact_id", UUID, nullable=False),
        _text("status", default="open"),
        Column("subject", Text),
        _count("message_count"), _count("inbound_count"),
        _at("first_message_at", default=False), _at("last_message_at", default=False),
        _at("last_inbound_at", default=False),
        Column("awaiting_reply", Boolean, nullable=False, server_default=text("false")),
        Column("category", Text), Column("priority", Text),
        Column("suggested_team_id", UUID),
        _at("resolved_at", default=False), _at("created_at"), _at("updated_at"),
        # The SLA clock, started when the conversation opens or reopens (migration 0012).
        _at("sla_started_at", default=False), _at("first_response_due_at", default=False),
        _at("resolution_due_at", default=False), _at("sla_breached_at", default=False),
        # Set by the applications that read the tables, through the admin API (migration 0017).
        Column("assignee", Text), Column("team_id", UUID), _at("first_response_at", default=False),
        UniqueConstraint("tenant_id", "id"),
        _tenant_fk("inbox_id", "inboxes"),
        _tenant_fk("contact_id", "contacts"),
        _tenant_fk("suggested_team_id", "teams", ondelete=None),
        _tenant_fk("team_id", "teams", ondelete="SET NULL (team_id)"),
        _one_of("status", "open", "resolved", "merged"),
        CheckConstraint("length(assignee) BETWEEN 1 AND 200", name="assignee"),
    )
    c = conversations.c
    # At most one open conversation per tenant, inbox and contact.
    Index("conversations_one_open_idx", c.tenant_id, c.inbox_id, c.contact_id, unique=True,
          postgresql_where=text("status = 'open'::text"))
    Index("conversations_contact_idx", c.tenant_id, c.contact_id, c.last_message_at.desc())
    Index("conversations_inbox_activity_idx", c.tenant_id, c.inbox_id, c.status, c.last_message_at.desc())
    Index("conversations_tenant_activity_idx", c.tenant_id, c.updated_at.desc(), c.id.desc())
    Index("conversations_sla_due_idx", c.tenant_id, c.first_response_due_at, c.resolution_due_at,
          postgresql_where=text("status = 'open'::text AND sla_breached_at IS NULL"))


def _events(md: MetaData) -> None:
    events = Table(
        "inbound_events", md,
        _id(), _tenant_id(),
        Column("inbox_id", UUID, nullable=False),
        _text("channel"), _text("dedupe_key"), _text("content_type", default=""),
        Column("headers", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        Column("body", LargeBinary, nullable=False),
        _text("status", default="received"),
        _count("attempts"),
        Column("error", Text),
        _at("received_at"), _at("enqueued_at", default=False), _at("processed_at", default=False),
        # When retention or an erasure removed the raw body; the row and its dedupe key stay (migration 0012).
        _at("body_purged_at", default=False),
        UniqueConstraint("tenant_id", "inbox_id", "dedupe_key"),
        UniqueConstraint("tenant_id", "id"),
        _tenant_fk("inbox_id", "inboxes"),
        _one_of("status", "received", "queued", "processed", "failed"),
    )
    e = events.c
    # An ingest job tops its batch up with its tenant's oldest waiting events; the sweeper scans the same.
    # A waiting event is in this index only (the settled index leaves it out), so a job reads just its own
    # tenant's waiting events whatever the statistics say (migration 0013).
    Index("inbound_events_waiting_idx", e.status, e.tenant_id, e.received_at,
          postgresql_where=text("status = 'received'::text"))
    Index("inbound_events_tenant_received_idx", e.tenant_id, e.received_at.desc())
    # Processed and failed events by status and time: the operators' listings and the console's figures.
    Index("inbound_events_settled_idx", e.status, e.received_at.desc(),
          postgresql_where=text("status <> 'received'::text"))
    # Processed events whose body is still kept, oldest first: the clock's purge reads only these.
    Index("inbound_events_body_kept_idx", e.tenant_id, e.processed_at,
          postgresql_where=text("status = 'processed'::text AND body_purged_at IS NULL"))
    Table(
        "replay_tokens", md,
        Column("tenant_id", UUID, primary_key=True),
        Column("inbox_id", UUID, primary_key=True),
        Column("token", Text, primary_key=True),
        _text("dedupe_key"),
        Column("body_digest", LargeBinary, nullable=False),
        _at("claimed_at"),
        _tenant_fk("inbox_id", "inboxes"),
    )


def _messages(md: MetaData) -> None:
    messages = Table(
        "messages", md,
        _id(), _tenant_id(),
        Column("inbox_id", UUID, nullable=False),
        Column("conversation_id", UUID), Column("contact_id", UUID), Column("event_id", UUID),
        _text("direction"), _text("kind", default="text"), _text("external_id"),
        Column("rfc_message_id", Text), Column("subject", Text),
        _text("content", default=""),
        Column("content_html", Text), Column("quoted_text", Text),
        Column("attachments", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
        Column("metadata", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        Column("status", Text), Column("status_error", Text),
        _at("status_updated_at", default=False),
        Column("sent_at", DateTime(timezone=True), nullable=False),
        _at("received_at"),
        # When the worker stored the message (received_at is when the ingress got it).
        Column("stored_at", DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")),
        # A reply's Idempotency-Key, unique per tenant (migration 0017).
        Column("idempotency_key", Text),
        # Set by the one worker about to call the provider for a queued reply (migration 0018).
        _at("send_claimed_at", default=False),
        UniqueConstraint("tenant_id", "inbox_id", "external_id"),
        UniqueConstraint("tenant_id", "id"),
        _tenant_fk("inbox_id", "inboxes"),
        _tenant_fk("conversation_id", "conversations"),
        _tenant_fk("contact_id", "contacts", ondelete="SET NULL (contact_id)"),
        _tenant_fk("event_id", "inbound_events", ondelete="SET NULL (event_id)"),
        _one_of("direction", "inbound", "outbound"),
        _one_of("status", "received", "queued", "sent", "delivered", "read", "failed"),
    )
    m = messages.c
    Index("messages_conversation_time_idx", m.tenant_id, m.conversation_id, m.sent_at, m.id)
    Index("messages_contact_idx", m.tenant_id, m.contact_id)
    Index("messages_idempotency_key_idx", m.tenant_id, m.idempotency_key, unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL"))
    Index("messages_rfc_id_idx", m.tenant_id, m.inbox_id, m.rfc_message_id,
          postgresql_where=text("rfc_message_id IS NOT NULL"))
    # Rows arrive in stored_at order: the BRIN index stays tiny (the clock's scan for lost AI jobs).
    Index("messages_stored_at_brin", m.stored_at, postgresql_using="brin")
    Index("messages_in_flight_idx", m.tenant_id, m.inbox_id, postgresql_where=text("send_claimed_at IS NOT NULL"))


def _ai(md: MetaData) -> None:
    Table(
        "ai_classifications", md,
        _id(), _tenant_id(),
        Column("message_id", UUID, nullable=False),
        _text("prompt_version"), _text("category"), _text("priority"), _text("sentiment"),
        Column("sentiment_score", REAL),
        _text("language"),
        Column("confidence", REAL, nullable=False),
        _text("reasoning"),
        Column("suggested_team_id", UUID),
        Column("is_auto_reply", Boolean, nullable=False, server_default=text("false")),
        _text("provider"), _text("model"),
        _at("created_at"),
        UniqueConstraint("tenant_id", "message_id", "prompt_version"),
        _tenant_fk("message_id", "messages"),
        _tenant_fk("suggested_team_id", "teams", ondelete=None),
        _one_of("priority", "low", "normal", "high", "urgent"),
        _one_of("sentiment", "negative", "neutral", "positive"),
        CheckConstraint("length(language) = 2", name="language"),
        CheckConstraint("confidence BETWEEN 0 AND 1", name="confidence"),
    )
    Table(
        "ai_drafts", md,
        _id(), _tenant_id(),
        Column("message_id", UUID, nullable=False),
        Column("conversation_id", UUID, nullable=False),
        _text("prompt_version"), _text("content"), _text("status", default="pending"),
        Column("cited_chunk_ids", ARRAY(UUID), nullable=False, server_default=text("'{}'::uuid[]")),
        Column("confidence", REAL, nullable=False),
        Column("language", Text),
        _text("provider"), _text("model"),
        _at("created_at"), _at("updated_at"),
        # Who decided the draft and when: the reply it became (edited or not), or why it was rejected (0017).
        Column("reply_id", UUID), Column("edited", Boolean), _at("decided_at", default=False),
        Column("decided_by", Text), Column("reject_reason", Text),
        UniqueConstraint("tenant_id", "message_id", "prompt_version"),
        _tenant_fk("message_id", "messages"),
        _tenant_fk("conversation_id", "conversations"),
        _tenant_fk("reply_id", "messages", ondelete="SET NULL (reply_id)"),
        _one_of("status", "pending", "accepted", "rejected"),
        CheckConstraint("confidence BETWEEN 0 AND 1", name="confidence"),
    )
    # A person's category and priority for a message, beside the AI's rows (migration 0017).
    Table(
        "ai_corrections", md,
        _id(), _tenant_id(),
        Column("message_id", UUID, nullable=False),
        Column("category", Text), Column("priority", Text),
        _text("actor"), Column("actor_key_id", UUID),
        _at("created_at"), _at("updated_at"),
        UniqueConstraint("tenant_id", "message_id"),
        _tenant_fk("message_id", "messages"),
        _one_of("priority", "low", "normal", "high", "urgent"),
    )
    # Labelled texts a tenant's AI learns from; one made from a message goes with it (migration 0017).
    examples = Table(
        "ai_examples", md,
        _id(), _tenant_id(),
        _text("text"), _text("category"), _text("source"),
        Column("message_id", UUID),
        _at("created_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "message_id"),
        _tenant_fk("message_id", "messages"),
        _one_of("source", "correction", "import", "taxonomy"),
    )
    Index("ai_examples_tenant_category_idx", examples.c.tenant_id, examples.c.category)
    # Each tenant's trained classifiers by version, latest read by every AI process (migration 0020).
    Table(
        "ai_models", md,
        _id(), _tenant_id(),
        Column("version", Integer, nullable=False),
        _text("format"), _count("examples", default=0), _count("categories", default=0),
        Column("accuracy", REAL),
        Column("train_seconds", REAL, nullable=False, server_default=text("0")),
        Column("model", LargeBinary, nullable=False),
        _at("created_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "version"),
        CheckConstraint("version > 0", name="version"),
        CheckConstraint("examples >= 0", name="examples"),
        CheckConstraint("categories >= 0", name="categories"),
        CheckConstraint("accuracy BETWEEN 0 AND 1", name="accuracy"),
    )
    usage = Table(
        "ai_usage", md,
        _id(), _tenant_id(),
        Column("message_id", UUID),
        _text("feature"), _text("provider"), _text("model"),
        _count("tokens_in"), _count("tokens_out"),
        Column("cost_usd", Numeric(14, 6), nullable=False, server_default=text("0")),
        _count("latency_ms"),
        _at("created_at"),
        _references_tenants(),
    )
    Index("ai_usage_tenant_time_idx", usage.c.tenant_id, usage.c.created_at)
    Table(
        "budget_alerts", md,
        _id(), _tenant_id(),
        Column("month", Date, nullable=False),
        Column("threshold", Integer, nullable=False),
        Column("spent_usd", Numeric(14, 6), nullable=False),
        Column("budget_usd", Numeric(14, 6), nullable=False),
        _at("created_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "month", "threshold"),
        CheckConstraint("threshold IN (80, 100)", name="threshold"),
    )


def _knowledge(md: MetaData, dim: int) -> None:
    Table(
        "knowledge_documents", md,
        _id(), _tenant_id(),
        _text("source"), _text("title"), _text("content_hash"), _text("embedding_model"),
        Column("embedding_dim", Integer, nullable=False),
        _count("chunk_count"),
        _at("created_at"), _at("updated_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "source"),
        UniqueConstraint("tenant_id", "id"),
    )
    chunks = Table(
        "knowledge_chunks", md,
        _id(), _tenant_id(),
        Column("document_id", UUID, nullable=False),
        Column("ordinal", Integer, nullable=False),
        _text("heading", default=""), _text("content"),
        # Every language's stems of the heading and the content, kept by a trigger (migration 0010).
        Column("search_vector", TSVECTOR),
        Column("embedding", Vector(dim), nullable=False),
        _text("embedding_model"),
        _at("created_at"),
        # The offline multilingual sentence embedding (pipelines.ai.semantic), NULL without it (migration 0021).
        Column("semantic", Vector(512)),
        UniqueConstraint("tenant_id", "document_id", "ordinal"),  # led by the tenant (migration 0019)
        UniqueConstraint("tenant_id", "id"),
        _tenant_fk("document_id", "knowledge_documents"),
    )
    k = chunks.c
    Index("knowledge_chunks_embedding_idx", k.embedding, postgresql_using="hnsw",
          postgresql_ops={"embedding": "vector_cosine_ops"})
    Index("knowledge_chunks_search_idx", k.search_vector, postgresql_using="gin")
    Index("knowledge_chunks_tenant_idx", k.tenant_id)


def _operations(md: MetaData) -> None:
    failures = Table(
        "job_failures", md,
        _id(),
        # NULL when the job named no valid tenant: then only the maintenance role reads the row.
        _tenant_id(nullable=True),
        _text("queue"), _text("actor"), _text("message_id"),
        Column("message", JSONB, nullable=False),
        Column("ref_id", Text),
        _text("exception_type"), _text("exception_message"), _text("traceback", default=""),
        _count("attempts", default=1),
        _text("status", default="dead"),
        _at("first_failed_at"), _at("last_failed_at"), _at("replayed_at", default=False),
        # Set by a trigger when the status leaves `dead` (migration 0012); retention counts from it.
        _at("settled_at", default=False),
        _references_tenants(),
        UniqueConstraint("message_id"),
        _one_of("status", "dead", "replayed", "discarded", "resolved"),
    )
    f = failures.c
    Index("job_failures_status_time_idx", f.status, f.last_failed_at.desc())
    Index("job_failures_tenant_time_idx", f.tenant_id, f.last_failed_at.desc())
    Index("job_failures_actor_idx", f.queue, f.actor, f.status)
    audit = Table(
        "audit_logs", md,
        _id(),
        # NULL for an operator action that belongs to no tenant: then only the maintenance role reads it.
        _tenant_id(nullable=True),
        _text("actor"), _text("action"), _text("subject_type"), _text("subject_id"),
        Column("details", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        _at("created_at"),
        Column("actor_key_id", UUID), Column("before", JSONB), Column("after", JSONB), Column("request_id", Text),
        _references_tenants(),
    )
    Index("audit_logs_tenant_time_idx", audit.c.tenant_id, audit.c.created_at.desc())
    Index("audit_logs_time_idx", audit.c.created_at.desc())
    keys = Table(
        "api_keys", md,
        _id(), _tenant_id(nullable=True),  # NULL: an operator key
        _text("name"), _text("prefix"),
        Column("key_hash", LargeBinary, nullable=False),
        _text("created_by"),
        _at("created_at"), _at("last_used_at", default=False), _at("revoked_at", default=False),
        _references_tenants(),
        UniqueConstraint("prefix"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name"),
    )
    Index("api_keys_tenant_idx", keys.c.tenant_id)


def _lifecycle(md: MetaData) -> None:
    """Monthly AI usage totals (kept after retention removes the rows) and SLA policies (migration 0012)."""
    Table(
        "ai_usage_monthly", md,
        _id(), _tenant_id(),
        Column("month", Date, nullable=False),
        _text("feature"), _text("provider"), _text("model"),
        *(Column(name, BigInteger, nullable=False, server_default=text("0"))
          for name in ("calls", "tokens_in", "tokens_out")),
        Column("cost_usd", Numeric(16, 6), nullable=False, server_default=text("0")),
        Column("latency_ms", BigInteger, nullable=False, server_default=text("0")),
        _references_tenants(),
        UniqueConstraint("tenant_id", "month", "feature", "provider", "model"),
    )
    Table(
        "sla_policies", md,
        _id(), _tenant_id(),
        _text("priority"),
        Column("first_response_minutes", Integer),
        Column("resolution_minutes", Integer),
        _text("time_zone", default="UTC"),
        # {"mon": [["09:00", "17:00"]], ...}; NULL: around the clock.
        Column("business_hours", JSONB),
        Column("holidays", ARRAY(Date), nullable=False, server_default=text("'{}'::date[]")),
        _at("created_at"), _at("updated_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "priority"),
        _one_of("priority", "low", "normal", "high", "urgent"),
        CheckConstraint("first_response_minutes > 0", name="first_response_minutes"),
        CheckConstraint("resolution_minutes > 0", name="resolution_minutes"),
    )


def _changes(md: MetaData) -> None:
    """The change feed: each tenant's numbered events and the head that numbers them (migration 0015)."""
    Table(
        "change_feed_heads", md,
        Column("tenant_id", UUID, primary_key=True),
        Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
        _references_tenants(),
    )
    events = Table(
        "change_events", md,
        Column("tenant_id", UUID, primary_key=True),
        Column("seq", BigInteger, primary_key=True),
        Column("id", UUID, nullable=False, server_default=text("gen_random_uuid()")),
        _text("type"),
        # Events of one conversation are delivered in order; the subject is the row the event is about.
        Column("conversation_id", UUID), Column("subject_id", UUID),
        Column("data", JSONB, nullable=False, server_default=EMPTY_OBJECT),
        _at("created_at"),
        _references_tenants(),
        CheckConstraint("type ~ '^[a-z_]+\\.[a-z_]+$'", name="type"),
    )
    e = events.c
    Index("change_events_tenant_created_idx", e.tenant_id, e.created_at)
    Index("change_events_subject_idx", e.tenant_id, e.subject_id, postgresql_where=text("subject_id IS NOT NULL"))


def _webhooks(md: MetaData) -> None:
    """Webhook endpoints and one delivery row per endpoint and event (migration 0016)."""
    endpoints = Table(
        "webhook_endpoints", md,
        _id(), _tenant_id(),
        _text("url"),
        # Empty: every type.
        Column("event_types", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
        _text("description", default=""),
        Column("rate_limit_per_second", Integer),
        # Sealed with INTAKE_SECRET_KEY (pipelines.crypto); the previous one signs too until the overlap ends.
        _text("secret"), Column("previous_secret", Text), _at("previous_secret_until", default=False),
        Column("enabled", Boolean, nullable=False, server_default=text("true")),
        _at("disabled_at", default=False), Column("disabled_reason", Text), _at("failing_since", default=False),
        # The last event of the tenant's feed already planned as deliveries for this endpoint.
        Column("cursor_seq", BigInteger, nullable=False, server_default=text("0")),
        _at("created_at"), _at("updated_at"),
        _references_tenants(),
        UniqueConstraint("tenant_id", "id"),
        CheckConstraint("length(url) BETWEEN 1 AND 2000", name="url"),
        CheckConstraint("rate_limit_per_second > 0", name="rate_limit_per_second"),
    )
    Index("webhook_endpoints_tenant_idx", endpoints.c.tenant_id)
    attempts = Table(
        "webhook_attempts", md,
        _id(), _tenant_id(),
        Column("endpoint_id", UUID, nullable=False),
        Column("event_seq", BigInteger, nullable=False),
        Column("event_id", UUID, nullable=False),
        Column("conversation_id", UUID),
        _text("status", default="pending"),
        _count("attempts"),
        _at("next_attempt_at"),
        # Set while a worker sends it: a worker that dies leaves a lease that runs out.
        _at("leased_until", default=False),
        Column("last_status_code", Integer), Column("last_error", Text), Column("response_excerpt", Text),
        _at("created_at"), _at("updated_at"), _at("delivered_at", default=False),
        _references_tenants(),
        UniqueConstraint("tenant_id", "endpoint_id", "event_seq"),
        _tenant_fk("endpoint_id", "webhook_endpoints"),
        _one_of("status", "pending", "delivered", "failed"),
    )
    a = attempts.c
    pending = text("status = 'pending'::text")
    Index("webhook_attempts_due_idx", a.tenant_id, a.endpoint_id, a.next_attempt_at, postgresql_where=pending)
    Index("webhook_attempts_order_idx", a.tenant_id, a.endpoint_id, a.conversation_id, a.event_seq,
          postgresql_where=pending)
    Index("webhook_attempts_endpoint_idx", a.tenant_id, a.endpoint_id, a.event_seq.desc())


def _outbound(md: MetaData) -> None:
    """Delivery statuses that arrived before their message's provider id was recorded (migration 0018)."""
    Table(
        "early_statuses", md,
        _id(), _tenant_id(),
        Column("inbox_id", UUID, nullable=False),
        _text("external_id"), _text("status"), Column("error", Text),
        Column("at", DateTime(timezone=True), nullable=False),
        _at("created_at"),
        UniqueConstraint("tenant_id", "inbox_id", "external_id", "status"),
        _references_tenants(),
        _tenant_fk("inbox_id", "inboxes"),
        _one_of("status", "queued", "sent", "delivered", "read", "failed"),
    )


def metadata_for(dim: int = DEFAULT_EMBEDDING_DIM) -> MetaData:
    """Every table of the data contract, with embeddings `dim` wide (the database's INTAKE_EMBEDDING_DIM)."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    _tenancy(md)
    _contacts(md)
    _conversations(md)
    _events(md)
    _messages(md)
    _ai(md)
    _knowledge(md, dim)
    _operations(md)
    _lifecycle(md)
    _changes(md)
    _webhooks(md)
    _outbound(md)
    return md


metadata = metadata_for()

tenants = metadata.tables["tenants"]
inboxes = metadata.tables["inboxes"]
teams = metadata.tables["teams"]
contacts = metadata.tables["contacts"]
contact_identities = metadata.tables["contact_identities"]
contact_merges = metadata.tables["contact_merges"]
contact_duplicate_candidates = metadata.tables["contact_duplicate_candidates"]
conversations = metadata.tables["conversations"]
inbound_events = metadata.tables["inbound_events"]
replay_tokens = metadata.tables["replay_tokens"]
messages = metadata.tables["messages"]
ai_classifications = metadata.tables["ai_classifications"]
ai_drafts = metadata.tables["ai_drafts"]
ai_corrections = metadata.tables["ai_corrections"]
ai_examples = metadata.tables["ai_examples"]
ai_models = metadata.tables["ai_models"]
ai_usage = metadata.tables["ai_usage"]
budget_alerts = metadata.tables["budget_alerts"]
knowledge_documents = metadata.tables["knowledge_documents"]
knowledge_chunks = metadata.tables["knowledge_chunks"]
job_failures = metadata.tables["job_failures"]
audit_logs = metadata.tables["audit_logs"]
api_keys = metadata.tables["api_keys"]
ai_personas = metadata.tables["ai_personas"]
ai_usage_monthly = metadata.tables["ai_usage_monthly"]
sla_policies = metadata.tables["sla_policies"]
change_feed_heads = metadata.tables["change_feed_heads"]
change_events = metadata.tables["change_events"]
webhook_endpoints = metadata.tables["webhook_endpoints"]
webhook_attempts = metadata.tables["webhook_attempts"]
early_statuses = metadata.tables["early_statuses"]
