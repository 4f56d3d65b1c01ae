"""The change feed: `change_events`, one row per change the fleet makes, numbered per tenant.

Applications downstream (an agent inbox, a CRM) learn what changed by reading the feed instead of polling
every table. A change and its event commit together: `intake_record_changes(tenant, changes)` is called in
the transaction that made the change, so the feed never tells of a change that rolled back and never misses
one that committed.

`seq` is strictly increasing per tenant and has no gaps *in commit order*: the function takes the next
numbers from the tenant's row of `change_feed_heads`, whose row lock it holds until the transaction ends.
A reader that has seen every event up to `seq` N therefore never finds a smaller one later (a counter taken
without the lock could hand 5 to a transaction that commits after the one holding 6, and a reader resuming
after 6 would never see 5). The lock serializes only the tenant's transactions that record changes, and
only from the call to their commit: callers record their changes as the last statement before the commit.

Each call notifies the channel `intake_changes` with `<tenant>:<last seq>` (delivered at commit), so a
stream or a delivery process waits on LISTEN instead of polling.

`conversation_id` is what ordering follows (events of one conversation are delivered in `seq` order);
`subject_id` is the row the event is about (a message, a contact), so an erasure finds the events to redact.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
CREATE TABLE change_feed_heads (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants ON DELETE CASCADE,
    last_seq    bigint NOT NULL DEFAULT 0
);

CREATE TABLE change_events (
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    seq             bigint NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    type            text NOT NULL CHECK (type ~ '^[a-z_]+\\.[a-z_]+$'),
    conversation_id uuid,
    subject_id      uuid,
    data            jsonb NOT NULL DEFAULT '{{}}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq)
);
-- Retention removes the oldest events of a tenant; an erasure finds the events about a subject.
CREATE INDEX change_events_tenant_created_idx ON change_events (tenant_id, created_at);
CREATE INDEX change_events_subject_idx ON change_events (tenant_id, subject_id) WHERE subject_id IS NOT NULL;

CREATE FUNCTION intake_record_changes(tenant uuid, changes json) RETURNS bigint
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    n integer := json_array_length(changes);
    last bigint;
BEGIN
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO change_feed_heads AS h (tenant_id, last_seq) VALUES (tenant, n)
    ON CONFLICT (tenant_id) DO UPDATE SET last_seq = h.last_seq + n
    RETURNING h.last_seq INTO last;
    INSERT INTO change_events (tenant_id, seq, type, conversation_id, subject_id, data)
    SELECT tenant, last - n + c.ord, c.e->>'type', CAST(c.e->>'conversation_id' AS uuid),
           CAST(c.e->>'subject_id' AS uuid), coalesce(CAST(c.e->'data' AS jsonb), '{{}}')
    FROM json_array_elements(changes) WITH ORDINALITY AS c(e, ord);
    PERFORM pg_notify('intake_changes', tenant::text || ':' || last::text);
    RETURN last;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON change_feed_heads, change_events TO intake_app;
ALTER TABLE change_feed_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE change_feed_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON change_feed_heads USING (tenant_id = {CURRENT_TENANT});
ALTER TABLE change_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE change_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON change_events USING (tenant_id = {CURRENT_TENANT});

-- The clock, bound to one tenant at a time, records breaches and applies the feed's retention.
GRANT SELECT, INSERT, UPDATE ON change_feed_heads TO intake_maintenance;
GRANT SELECT, INSERT, DELETE ON change_events TO intake_maintenance;
"""

DOWNGRADE = """
DROP FUNCTION intake_record_changes(uuid, json);
DROP TABLE change_events;
DROP TABLE change_feed_heads;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
