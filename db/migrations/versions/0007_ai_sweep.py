"""What the clock needs to find stored messages whose AI job was lost.

The `ai` job for new messages is sent after the ingest commit; if Redis loses it (restarted empty,
flushed), the message stays unclassified. The clock looks for inbound messages stored a while ago that
have no classification at all, by time window across tenants:

- a BRIN index on `messages.stored_at` (rows arrive in stored_at order, so the index stays tiny and costs
  the hot insert path almost nothing);
- the maintenance role may read, across tenants, exactly the columns that question needs: no content.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX messages_stored_at_brin ON messages USING brin (stored_at)")
    op.execute("GRANT SELECT (tenant_id, id, direction, stored_at) ON messages TO intake_maintenance")
    op.execute("GRANT SELECT (tenant_id, message_id) ON ai_classifications TO intake_maintenance")
    for table in ("messages", "ai_classifications"):
        op.execute(f"CREATE POLICY maintenance ON {table} FOR SELECT TO intake_maintenance USING (true)")


def downgrade() -> None:
    for table in ("messages", "ai_classifications"):
        op.execute(f"DROP POLICY maintenance ON {table}")
    op.execute("REVOKE SELECT (tenant_id, message_id) ON ai_classifications FROM intake_maintenance")
    op.execute("REVOKE SELECT (tenant_id, id, direction, stored_at) ON messages FROM intake_maintenance")
    op.execute("DROP INDEX messages_stored_at_brin")
