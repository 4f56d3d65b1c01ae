"""Contacts that look alike (same name, similar email), kept for a person to review.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE contact_duplicate_candidates (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id       uuid NOT NULL,
        contact_id      uuid NOT NULL,
        candidate_id    uuid NOT NULL,
        score           real NOT NULL,
        reason          text NOT NULL,
        status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'merged', 'dismissed')),
        created_at      timestamptz NOT NULL DEFAULT now(),
        CHECK (contact_id < candidate_id),
        UNIQUE (tenant_id, contact_id, candidate_id),
        FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE,
        FOREIGN KEY (tenant_id, candidate_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE
    );
    CREATE INDEX contacts_tenant_name_idx ON contacts (tenant_id, lower(display_name));
    GRANT SELECT, INSERT, UPDATE, DELETE ON contact_duplicate_candidates TO intake_app;
    ALTER TABLE contact_duplicate_candidates ENABLE ROW LEVEL SECURITY;
    ALTER TABLE contact_duplicate_candidates FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON contact_duplicate_candidates
        USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
    """)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS contacts_tenant_name_idx")
    op.execute("DROP TABLE contact_duplicate_candidates")
