"""One statement stores a group commit of webhook events, each tenant's rows under that tenant.

The ingress commits the deliveries of many tenants together. Row-level security wants each tenant's rows
inserted while `app.tenant_id` names that tenant, which took two statements per tenant per batch; their
client-side cost was most of the web process's database time. `intake_store_events` takes the whole batch
as one JSON document (tenants in order, each with its rows; bodies in base64) and, for each tenant in
turn, sets the tenant and inserts its rows: the same policies apply, in one round trip and (in autocommit)
one transaction.

SECURITY INVOKER (the default): the function has exactly the caller's rights, and RLS binds every INSERT.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STORE_EVENTS = """
CREATE FUNCTION intake_store_events(batch json)
RETURNS TABLE (event_tenant_id uuid, event_id uuid, event_inbox_id uuid, event_dedupe_key text)
LANGUAGE plpgsql
AS $$
DECLARE
    tenant_rows json;
BEGIN
    -- [{"tenant": uuid, "rows": [{inbox_id, channel, dedupe_key, content_type, headers, body, received_at}]}]
    -- Rows arrive sorted by (tenant, inbox, dedupe key): concurrent batches take the unique index's locks
    -- in one order and cannot deadlock.
    FOR tenant_rows IN SELECT json_array_elements(batch) LOOP
        PERFORM set_config('app.tenant_id', tenant_rows->>'tenant', true);
        RETURN QUERY
        INSERT INTO inbound_events AS e
               (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, received_at)
        SELECT (tenant_rows->>'tenant')::uuid, r.inbox_id, r.channel, r.dedupe_key, r.content_type, r.headers,
               decode(r.body, 'base64'), r.received_at
        FROM json_to_recordset(tenant_rows->'rows')
             AS r(inbox_id uuid, channel text, dedupe_key text, content_type text, headers jsonb, body text,
                  received_at timestamptz)
        ON CONFLICT (tenant_id, inbox_id, dedupe_key) DO NOTHING
        RETURNING e.tenant_id, e.id, e.inbox_id, e.dedupe_key;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$
"""


def upgrade() -> None:
    op.execute(STORE_EVENTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION intake_store_events(json)")
