"""Distribution-ready keys: the two keys of tenant tables that did not lead with tenant_id now do.

Citus (distributing by tenant) requires every unique key of a distributed table to include the distribution
column, and a foreign key between distributed tables to include it on both sides;
`tests/deployment/test_distribution.py` checks the whole declared schema.
`knowledge_chunks (document_id, ordinal)` becomes `(tenant_id, document_id, ordinal)` (the same rows are
unique: a document belongs to one tenant), and
`contacts.merged_into_id` is checked as `(tenant_id, merged_into_id)` against `(tenant_id, id)`, which also
states that a contact merges only into a contact of its own tenant. ON DELETE SET NULL keeps nulling the
merge pointer only, never the tenant.
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE knowledge_chunks ADD UNIQUE (tenant_id, document_id, ordinal);
ALTER TABLE knowledge_chunks DROP CONSTRAINT knowledge_chunks_document_id_ordinal_key;
ALTER TABLE contacts ADD FOREIGN KEY (tenant_id, merged_into_id) REFERENCES contacts (tenant_id, id)
    ON DELETE SET NULL (merged_into_id);
ALTER TABLE contacts DROP CONSTRAINT contacts_merged_into_id_fkey;
"""

DOWNGRADE = """
ALTER TABLE contacts ADD FOREIGN KEY (merged_into_id) REFERENCES contacts (id) ON DELETE SET NULL;
ALTER TABLE contacts DROP CONSTRAINT contacts_tenant_id_merged_into_id_fkey;
ALTER TABLE knowledge_chunks ADD UNIQUE (document_id, ordinal);
ALTER TABLE knowledge_chunks DROP CONSTRAINT knowledge_chunks_tenant_id_document_id_ordinal_key;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
