"""Index look-ups whose cost does not grow with the tables: namesakes of a new contact, a tenant's waiting events.

Migration 0002 indexed `(tenant_id, lower(display_name))`, but the fleet's role never used it: row-level
security lets PostgreSQL apply a condition before the policy's own only when the condition cannot leak
the values it reads, and `lower()` is not marked leakproof. So every new contact read all of its tenant's
contacts, a cost that grew with the tenant.

- `contacts.display_name_key`: `lower(display_name)`, a stored generated column. Comparing it with an
  already lowered name is a plain text equality, which is leakproof, so the index applies.
- `contacts_tenant_name_key_idx` on `(tenant_id, display_name_key)` replaces `contacts_tenant_name_idx`.

An ingest job tops its batch up with its tenant's oldest waiting events. On a large table the statistics
say that almost no event is waiting (events are processed within moments), and the planner then preferred
`inbound_events_status_idx (status, received_at)`, which leads with a column whose rows lie in table order:
it read every tenant's waiting events, fetching each row to check its tenant, so each job of a small tenant
paid for the whole backlog. `inbound_events_waiting_idx` now leads with `status` too, then the tenant, and
`inbound_events_status_idx` gives way to `inbound_events_settled_idx`, the same columns for every status but
`received`: a waiting event is then in one index only, the one that reads just the tenant's own waiting
events, whatever the statistics say. (The operators' listings of processed and failed events, and the
console's latency figures, read the settled index; the sweeper and the stuck counts read the waiting one.)

Adding a stored generated column rewrites `contacts` under an exclusive lock: on a large table, run it in a
quiet hour.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE contacts ADD COLUMN display_name_key text GENERATED ALWAYS AS (lower(display_name)) STORED;
CREATE INDEX contacts_tenant_name_key_idx ON contacts (tenant_id, display_name_key);
DROP INDEX contacts_tenant_name_idx;
DROP INDEX inbound_events_waiting_idx;
CREATE INDEX inbound_events_waiting_idx ON inbound_events (status, tenant_id, received_at) WHERE status = 'received';
CREATE INDEX inbound_events_settled_idx ON inbound_events (status, received_at DESC) WHERE status <> 'received';
DROP INDEX inbound_events_status_idx;
"""
DOWNGRADE = """
CREATE INDEX inbound_events_status_idx ON inbound_events (status, received_at DESC);
DROP INDEX inbound_events_settled_idx;
DROP INDEX inbound_events_waiting_idx;
CREATE INDEX inbound_events_waiting_idx ON inbound_events (tenant_id, received_at) WHERE status = 'received';
CREATE INDEX contacts_tenant_name_idx ON contacts (tenant_id, lower(display_name));
ALTER TABLE contacts DROP COLUMN display_name_key;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
