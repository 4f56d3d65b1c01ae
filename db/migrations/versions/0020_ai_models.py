"""Tenant classifiers: `ai_models`, each tenant's trained models by version.

A model is trained from the tenant's `ai_examples` and its taxonomy's examples, and stored here (never on a
process's disk), so every AI process finds the latest one and reloads it when the version moves. The model
itself is a compressed array file (`bytea`, see `pipelines.ai.learned`), with what it was trained on and its
cross-validated accuracy beside it. A classification names the version in `ai_classifications.model`.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
CREATE TABLE ai_models (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    version         integer NOT NULL CHECK (version > 0),
    format          text NOT NULL,
    examples        integer NOT NULL DEFAULT 0 CHECK (examples >= 0),
    categories      integer NOT NULL DEFAULT 0 CHECK (categories >= 0),
    accuracy        real CHECK (accuracy BETWEEN 0 AND 1),
    train_seconds   real NOT NULL DEFAULT 0,
    model           bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, version)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON ai_models TO intake_app;
ALTER TABLE ai_models ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_models FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ai_models USING (tenant_id = {CURRENT_TENANT});
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE ai_models")
