"""Conversations written back: replies, state, drafts decided, classifications corrected, examples to learn from.

The applications that read the tables (an agent inbox, a CRM) now write back through the admin API:

- `conversations.assignee` (an agent's id as the application knows it), `team_id` (one of the tenant's teams)
  and `first_response_at` (the first reply ever sent, set once); listings go newest activity first, by
  `updated_at`, which every change to a conversation moves;
- `messages.idempotency_key`: a reply's `Idempotency-Key`, unique per tenant, so the same request twice (two
  threads, two processes, a retry after a lost answer) stores one message and sends it once;
- `ai_drafts` remembers who decided a draft and when, the reply it became (and whether it was edited first),
  or why it was rejected;
- `ai_corrections`: a person's category and priority for a message, one per message, beside the AI's rows;
- `ai_examples`: labelled texts a tenant's AI learns from: corrections (one per message), imports and the like.
  An example made from a message goes with the message (retention) and with its sender (erasure).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
ALTER TABLE conversations ADD COLUMN assignee text;
ALTER TABLE conversations ADD COLUMN team_id uuid;
ALTER TABLE conversations ADD COLUMN first_response_at timestamptz;
ALTER TABLE conversations ADD CONSTRAINT conversations_assignee_check CHECK (length(assignee) BETWEEN 1 AND 200);
ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_id_team_id_fkey
    FOREIGN KEY (tenant_id, team_id) REFERENCES teams (tenant_id, id) ON DELETE SET NULL (team_id);
-- The conversation listing: a tenant's conversations by latest activity, a page at a time.
CREATE INDEX conversations_tenant_activity_idx ON conversations (tenant_id, updated_at DESC, id DESC);

ALTER TABLE messages ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX messages_idempotency_key_idx ON messages (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE ai_drafts ADD COLUMN reply_id uuid;
ALTER TABLE ai_drafts ADD COLUMN edited boolean;
ALTER TABLE ai_drafts ADD COLUMN decided_at timestamptz;
ALTER TABLE ai_drafts ADD COLUMN decided_by text;
ALTER TABLE ai_drafts ADD COLUMN reject_reason text;
ALTER TABLE ai_drafts ADD CONSTRAINT ai_drafts_tenant_id_reply_id_fkey
    FOREIGN KEY (tenant_id, reply_id) REFERENCES messages (tenant_id, id) ON DELETE SET NULL (reply_id);

CREATE TABLE ai_corrections (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    message_id      uuid NOT NULL,
    category        text,
    priority        text CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    actor           text NOT NULL,
    actor_key_id    uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, message_id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE ai_examples (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    text            text NOT NULL,
    category        text NOT NULL,
    source          text NOT NULL CHECK (source IN ('correction', 'import', 'taxonomy')),
    message_id      uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, message_id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX ai_examples_tenant_category_idx ON ai_examples (tenant_id, category);

GRANT SELECT, INSERT, UPDATE, DELETE ON ai_corrections, ai_examples TO intake_app;
ALTER TABLE ai_corrections ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_corrections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ai_corrections USING (tenant_id = {CURRENT_TENANT});
ALTER TABLE ai_examples ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_examples FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ai_examples USING (tenant_id = {CURRENT_TENANT});
"""

DOWNGRADE = """
DROP TABLE ai_examples;
DROP TABLE ai_corrections;
ALTER TABLE ai_drafts DROP CONSTRAINT ai_drafts_tenant_id_reply_id_fkey;
ALTER TABLE ai_drafts DROP COLUMN reject_reason, DROP COLUMN decided_by, DROP COLUMN decided_at,
    DROP COLUMN edited, DROP COLUMN reply_id;
DROP INDEX messages_idempotency_key_idx;
ALTER TABLE messages DROP COLUMN idempotency_key;
DROP INDEX conversations_tenant_activity_idx;
ALTER TABLE conversations DROP CONSTRAINT conversations_tenant_id_team_id_fkey;
ALTER TABLE conversations DROP CONSTRAINT conversations_assignee_check;
ALTER TABLE conversations DROP COLUMN first_response_at, DROP COLUMN team_id, DROP COLUMN assignee;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
