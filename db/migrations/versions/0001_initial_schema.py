"""The data contract: tenant-scoped tables, idempotency keys, FORCE row-level security, roles.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every table that belongs to one tenant. Each gets FORCE ROW LEVEL SECURITY and the tenant policy.
TENANT_TABLES = (
    "inboxes", "teams", "contacts", "contact_identities", "contact_merges", "conversations", "messages",
    "inbound_events", "ai_classifications", "ai_drafts", "knowledge_documents", "knowledge_chunks",
    "ai_usage", "budget_alerts", "job_failures", "audit_logs",
)
# Operational tables that the maintenance role (sweeper, dead-letter tools) reads across tenants.
MAINTENANCE_TABLES = ("tenants", "inboxes", "inbound_events", "job_failures")

# `current_setting(..., true)` is NULL when never set and '' after a reset: both mean "no tenant".
CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    settings    jsonb NOT NULL DEFAULT '{{}}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inboxes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    channel     text NOT NULL CHECK (channel IN
                  ('twilio', 'whatsapp', 'postmark', 'mailgun', 'sendgrid', 'telegram', 'api')),
    name        text NOT NULL,
    secrets     text NOT NULL,
    settings    jsonb NOT NULL DEFAULT '{{}}',
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX inboxes_tenant_idx ON inboxes (tenant_id);

CREATE TABLE teams (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    keywords    text[] NOT NULL DEFAULT '{{}}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE contacts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    display_name    text,
    merged_into_id  uuid REFERENCES contacts ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX contacts_tenant_created_idx ON contacts (tenant_id, created_at);

CREATE TABLE contact_identities (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    contact_id  uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('phone', 'email', 'telegram', 'external')),
    value       text NOT NULL CHECK (length(value) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, kind, value),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX contact_identities_contact_idx ON contact_identities (contact_id);

CREATE TABLE contact_merges (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    survivor_id uuid NOT NULL,
    merged_id   uuid NOT NULL,
    reason      text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{{}}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, survivor_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE conversations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL,
    inbox_id            uuid NOT NULL,
    contact_id          uuid NOT NULL,
    status              text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'merged')),
    subject             text,
    message_count       integer NOT NULL DEFAULT 0,
    inbound_count       integer NOT NULL DEFAULT 0,
    first_message_at    timestamptz,
    last_message_at     timestamptz,
    last_inbound_at     timestamptz,
    awaiting_reply      boolean NOT NULL DEFAULT false,
    category            text,
    priority            text,
    suggested_team_id   uuid,
    resolved_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, suggested_team_id) REFERENCES teams (tenant_id, id)
);
-- At most one open conversation per tenant, inbox and contact.
CREATE UNIQUE INDEX conversations_one_open_idx ON conversations (tenant_id, inbox_id, contact_id)
    WHERE status = 'open';
CREATE INDEX conversations_contact_idx ON conversations (tenant_id, contact_id, last_message_at DESC);
CREATE INDEX conversations_inbox_activity_idx ON conversations (tenant_id, inbox_id, status, last_message_at DESC);

CREATE TABLE inbound_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    inbox_id        uuid NOT NULL,
    channel         text NOT NULL,
    dedupe_key      text NOT NULL,
    content_type    text NOT NULL DEFAULT '',
    headers         jsonb NOT NULL DEFAULT '{{}}',
    body            bytea NOT NULL,
    status          text NOT NULL DEFAULT 'received'
                    CHECK (status IN ('received', 'queued', 'processed', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    error           text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    enqueued_at     timestamptz,
    processed_at    timestamptz,
    UNIQUE (tenant_id, inbox_id, dedupe_key),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id) ON DELETE CASCADE
);
-- The sweeper's scan: events stored but never processed.
CREATE INDEX inbound_events_pending_idx ON inbound_events (received_at)
    WHERE status IN ('received', 'queued');
CREATE INDEX inbound_events_tenant_received_idx ON inbound_events (tenant_id, received_at DESC);

CREATE TABLE messages (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL,
    inbox_id            uuid NOT NULL,
    conversation_id     uuid,
    contact_id          uuid,
    event_id            uuid,
    direction           text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    kind                text NOT NULL DEFAULT 'text',
    external_id         text NOT NULL,
    rfc_message_id      text,
    subject             text,
    content             text NOT NULL DEFAULT '',
    content_html        text,
    quoted_text         text,
    attachments         jsonb NOT NULL DEFAULT '[]',
    metadata            jsonb NOT NULL DEFAULT '{{}}',
    status              text CHECK (status IN ('received', 'queued', 'sent', 'delivered', 'read', 'failed')),
    status_error        text,
    status_updated_at   timestamptz,
    sent_at             timestamptz NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, inbox_id, external_id),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id) ON DELETE SET NULL (contact_id),
    FOREIGN KEY (tenant_id, event_id) REFERENCES inbound_events (tenant_id, id) ON DELETE SET NULL (event_id)
);
CREATE INDEX messages_conversation_time_idx ON messages (tenant_id, conversation_id, sent_at, id);
CREATE INDEX messages_contact_idx ON messages (tenant_id, contact_id);
CREATE INDEX messages_rfc_id_idx ON messages (tenant_id, inbox_id, rfc_message_id)
    WHERE rfc_message_id IS NOT NULL;

CREATE TABLE ai_classifications (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL,
    message_id          uuid NOT NULL,
    prompt_version      text NOT NULL,
    category            text NOT NULL,
    priority            text NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    sentiment           text NOT NULL CHECK (sentiment IN ('negative', 'neutral', 'positive')),
    sentiment_score     real,
    language            text NOT NULL CHECK (length(language) = 2),
    confidence          real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    reasoning           text NOT NULL,
    suggested_team_id   uuid,
    is_auto_reply       boolean NOT NULL DEFAULT false,
    provider            text NOT NULL,
    model               text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, message_id, prompt_version),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, suggested_team_id) REFERENCES teams (tenant_id, id)
);

CREATE TABLE knowledge_documents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    source          text NOT NULL,
    title           text NOT NULL,
    content_hash    text NOT NULL,
    embedding_model text NOT NULL,
    embedding_dim   integer NOT NULL,
    chunk_count     integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, source),
    UNIQUE (tenant_id, id)
);

CREATE TABLE knowledge_chunks (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    document_id     uuid NOT NULL,
    ordinal         integer NOT NULL,
    heading         text NOT NULL DEFAULT '',
    content         text NOT NULL,
    search_vector   tsvector GENERATED ALWAYS AS
                        (to_tsvector('simple', heading || ' ' || content)) STORED,
    embedding       vector({dim}) NOT NULL,
    embedding_model text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, ordinal),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, document_id) REFERENCES knowledge_documents (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX knowledge_chunks_embedding_idx ON knowledge_chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX knowledge_chunks_search_idx ON knowledge_chunks USING gin (search_vector);
CREATE INDEX knowledge_chunks_tenant_idx ON knowledge_chunks (tenant_id);

CREATE TABLE ai_drafts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    message_id      uuid NOT NULL,
    conversation_id uuid NOT NULL,
    prompt_version  text NOT NULL,
    content         text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'rejected')),
    cited_chunk_ids uuid[] NOT NULL DEFAULT '{{}}',
    confidence      real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    language        text,
    provider        text NOT NULL,
    model           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, message_id, prompt_version),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE ai_usage (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    message_id  uuid,
    feature     text NOT NULL,
    provider    text NOT NULL,
    model       text NOT NULL,
    tokens_in   integer NOT NULL DEFAULT 0,
    tokens_out  integer NOT NULL DEFAULT 0,
    cost_usd    numeric(14, 6) NOT NULL DEFAULT 0,
    latency_ms  integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_usage_tenant_time_idx ON ai_usage (tenant_id, created_at);

CREATE TABLE budget_alerts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    month       date NOT NULL,
    threshold   integer NOT NULL CHECK (threshold IN (80, 100)),
    spent_usd   numeric(14, 6) NOT NULL,
    budget_usd  numeric(14, 6) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, month, threshold)
);

CREATE TABLE job_failures (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid REFERENCES tenants ON DELETE CASCADE,
    queue               text NOT NULL,
    actor               text NOT NULL,
    message_id          text NOT NULL,
    message             jsonb NOT NULL,
    ref_id              text,
    exception_type      text NOT NULL,
    exception_message   text NOT NULL,
    traceback           text NOT NULL DEFAULT '',
    attempts            integer NOT NULL DEFAULT 1,
    status              text NOT NULL DEFAULT 'dead'
                        CHECK (status IN ('dead', 'replayed', 'discarded', 'resolved')),
    first_failed_at     timestamptz NOT NULL DEFAULT now(),
    last_failed_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at         timestamptz,
    UNIQUE (message_id)
);
CREATE INDEX job_failures_status_time_idx ON job_failures (status, last_failed_at DESC);

CREATE TABLE audit_logs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    actor       text NOT NULL,
    action      text NOT NULL,
    subject_type text NOT NULL,
    subject_id  text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{{}}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_tenant_time_idx ON audit_logs (tenant_id, created_at DESC);
"""


def _ensure_role(name: str, login: bool) -> str:
    # Roles are cluster-wide: create them only when missing, never with superuser or BYPASSRLS.
    login_clause = "LOGIN" if login else "NOLOGIN"
    return f"""
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
            CREATE ROLE {name} {login_clause} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        END IF;
    END $$;
    """


def upgrade() -> None:
    # `db.migrate` hands INTAKE_EMBEDDING_DIM over as a config attribute (384 when run bare).
    config = op.get_context().config
    dim = int(config.attributes.get("embedding_dim", 384)) if config is not None else 384
    op.execute(SCHEMA.format(dim=dim))

    op.execute(_ensure_role("intake_app", login=True))
    op.execute(_ensure_role("intake_maintenance", login=False))
    # The schema owner is the operator: it runs the cross-tenant maintenance tools.
    op.execute("GRANT intake_maintenance TO CURRENT_USER")
    op.execute("GRANT USAGE ON SCHEMA public TO intake_app, intake_maintenance")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO intake_app")
    op.execute("REVOKE ALL ON alembic_version FROM intake_app")
    op.execute(
        "GRANT SELECT, UPDATE ON tenants, inboxes, inbound_events, job_failures TO intake_maintenance"
    )
    op.execute("GRANT INSERT, DELETE ON job_failures TO intake_maintenance")

    op.execute("ALTER TABLE tenants ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenants FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON tenants USING (id = {CURRENT_TENANT})")
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING (tenant_id = {CURRENT_TENANT})")
    # The ingress routes a webhook by the inbox id in its URL before it knows the tenant: knowing an
    # inbox's id lets a session read that one inbox row, and nothing else.
    op.execute(
        "CREATE POLICY inbox_routing ON inboxes FOR SELECT "
        "USING (id = NULLIF(current_setting('app.inbox_id', true), '')::uuid)"
    )
    for table in MAINTENANCE_TABLES:
        op.execute(f"CREATE POLICY maintenance ON {table} TO intake_maintenance USING (true)")


def downgrade() -> None:
    tables = ("tenants", *TENANT_TABLES)
    op.execute("DROP TABLE IF EXISTS " + ", ".join(reversed(tables)) + " CASCADE")
    op.execute("REVOKE USAGE ON SCHEMA public FROM intake_app, intake_maintenance")
