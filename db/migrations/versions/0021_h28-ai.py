"""Personas that reach the provider: `ai_personas.max_tokens` and `ai_personas.active`.

A persona's model and temperature were stored but never sent; its drafts now carry them, and a cap on the
reply's length (`max_tokens`). An inactive persona (`active = false`) is kept with its settings but drafts
nothing: its inboxes draft with the tenant's default persona, else the built-in one.

Revision ID: 0021h28ai
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0021h28ai"  # alembic refuses "-" in an identifier
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE ai_personas ADD COLUMN max_tokens integer;
ALTER TABLE ai_personas ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE ai_personas ADD CONSTRAINT ai_personas_max_tokens_check CHECK (max_tokens BETWEEN 1 AND 32768);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("ALTER TABLE ai_personas DROP COLUMN active, DROP COLUMN max_tokens")
