"""Personas that reach the provider (`ai_personas.max_tokens`, `.active`); chunks that carry their meaning
(`knowledge_chunks.semantic`).

A persona's model and temperature were stored but never sent; its drafts now carry them, and a cap on the
reply's length (`max_tokens`). An inactive persona (`active = false`) is kept with its settings but drafts
nothing: its inboxes draft with the tenant's default persona, else the built-in one.

`knowledge_chunks.semantic` is the chunk's sentence embedding by the offline multilingual encoder
(`pipelines.ai.semantic`, 512 dimensions), NULL where it was not installed at import. Retrieval ranks by it
beside the lexical vector and the full text; it is searched exactly within the tenant, so it has no index.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE ai_personas ADD COLUMN max_tokens integer;
ALTER TABLE ai_personas ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE ai_personas ADD CONSTRAINT ai_personas_max_tokens_check CHECK (max_tokens BETWEEN 1 AND 32768);
ALTER TABLE knowledge_chunks ADD COLUMN semantic vector(512);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("ALTER TABLE knowledge_chunks DROP COLUMN semantic")
    op.execute("ALTER TABLE ai_personas DROP COLUMN active, DROP COLUMN max_tokens")
