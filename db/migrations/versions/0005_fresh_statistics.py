"""Fresh planner statistics on the fastest-changing tables; waiting events indexed per tenant.

Plans for the hot statements (and the cached plans behind every foreign-key check) are chosen from
statistics. PostgreSQL re-analyzes a table after 10% of it has changed; a tenant that grows from nothing
spends its first minutes on plans made for an empty table: scans of the whole tenant instead of index
probes. Analyzing after 2% (and at least 200 rows) keeps those plans right while a table grows.

An ingest job tops its batch up with the oldest events of its tenant still waiting to be processed: the
waiting-events index leads with the tenant (the sweeper's scan across tenants reads the same small index).

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
    op.execute("CREATE INDEX inbound_events_waiting_idx ON inbound_events (tenant_id, received_at) "
                "WHERE status = 'received'")
    op.execute("DROP INDEX inbound_events_pending_idx")


def downgrade() -> None:
    op.execute("CREATE INDEX inbound_events_pending_idx ON inbound_events (received_at) "
                "WHERE status IN ('received', 'queued')")
    op.execute("DROP INDEX inbound_events_waiting_idx")
    for table in HOT_TABLES:
        op.execute(f"ALTER TABLE {table} RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, "
                   "autovacuum_vacuum_scale_factor)")
