"""Knowledge full-text search in the language of the question: stems and stop words of six languages.

`knowledge_chunks.search_vector` held the 'simple' configuration's words: a question matched on "the" and
"can", and "refunds" missed "refund". It now holds each chunk's words as the 'simple' configuration and
the English, Finnish, Swedish, German, Spanish and French ones read them (a knowledge base mixes
languages, and no chunk's language has to be guessed), the heading's weighted A. A question is reduced
by its own language's configuration, which drops that language's stop words and stems the rest; each
stem then meets the same language's stems in the chunks. PostgreSQL 16 cannot change a generated
column's expression, and dropping and adding the column would move it: it becomes a plain column that a
trigger keeps (its GIN index stays), computed anew for every row here, so nothing needs importing again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

CONFIGS = ("simple", "english", "finnish", "swedish", "german", "spanish", "french")


def _every_config(column: str) -> str:
    return " || ".join(f"to_tsvector('{config}'::regconfig, {column})" for config in CONFIGS)


def _expression(heading: str, content: str) -> str:
    return f"setweight({_every_config(heading)}, 'A') || {_every_config(content)}"


UPGRADE = f"""
ALTER TABLE knowledge_chunks ALTER COLUMN search_vector DROP EXPRESSION;
CREATE FUNCTION intake_knowledge_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search_vector := {_expression("NEW.heading", "NEW.content")};
    RETURN NEW;
END $$;
CREATE TRIGGER knowledge_chunks_search_vector BEFORE INSERT OR UPDATE OF heading, content ON knowledge_chunks
    FOR EACH ROW EXECUTE FUNCTION intake_knowledge_search_vector();
-- Every tenant's chunks: the owner is bound by FORCE row-level security (unless a superuser), and no tenant
-- is set here, so the update would otherwise see no row at all.
ALTER TABLE knowledge_chunks NO FORCE ROW LEVEL SECURITY;
UPDATE knowledge_chunks SET search_vector = {_expression("heading", "content")};
ALTER TABLE knowledge_chunks FORCE ROW LEVEL SECURITY;
"""
DOWNGRADE = """
DROP TRIGGER knowledge_chunks_search_vector ON knowledge_chunks;
DROP FUNCTION intake_knowledge_search_vector();
ALTER TABLE knowledge_chunks DROP COLUMN search_vector;
ALTER TABLE knowledge_chunks ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, ((heading || ' '::text) || content))) STORED;
CREATE INDEX knowledge_chunks_search_idx ON knowledge_chunks USING gin (search_vector);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
