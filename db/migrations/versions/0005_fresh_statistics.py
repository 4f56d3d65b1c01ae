"""Keep planner statistics fresh on the tables that grow and change fastest.

Plans for the hot statements (and the cached plans behind every foreign-key check) are chosen from
statistics. PostgreSQL re-analyzes a table after 10% of it has changed; a tenant that grows from nothing
spends its first minutes on plans made for an empty table: scans of the whole tenant instead of index
probes. Analyzing after 2% (and at least 200 rows) keeps those plans right while a table grows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HOT_TABLES = ("inbound_events", "messages", "conversations", "contacts", "contact_identities", "ai_classifications")


def upgrade() -> None:
    for table in HOT_TABLES:
        op.execute(f"ALTER TABLE {table} SET (autovacuum_analyze_scale_factor = 0.02, "
                   "autovacuum_analyze_threshold = 200, autovacuum_vacuum_scale_factor = 0.05)")


def downgrade() -> None:
    for table in HOT_TABLES:
        op.execute(f"ALTER TABLE {table} RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, "
                   "autovacuum_vacuum_scale_factor)")
