"""An ingest job's start in one statement: `intake_ingest_take(tenant, ids, statuses, wait, n)`.

An ingest job began with five round trips before it stored anything: bind its tenant, check that its events
still wait (another job's batch may have taken them), take the tenant's turn (a transaction-level advisory
lock, waiting at most `wait` ms), load its own events, and top the batch up with the tenant's oldest waiting
ones. With many tenants each sending a little, jobs are small and these round trips were a third of each
job's; behind a network (0.3-1 ms a round trip to a managed PostgreSQL) they were most of its time. This
function takes the same steps inside PostgreSQL, as its caller (SECURITY INVOKER: the same role, the same
row-level security), each step a statement of its own with its own snapshot, as before: the events are read
after the turn is taken, so a batch that ran meanwhile is seen. The tenant stays bound, and the lock held,
to the end of the caller's transaction, as `set_config(..., true)` and `pg_advisory_xact_lock` do.

It returns nothing when none of `ids` waits any more (`statuses`: `received`, and `failed` for a replay);
else the job's own events (`own`) locked in one global order, then up to `n` waiting events of the tenant
that nobody holds (SKIP LOCKED), read from the waiting index alone, as `pipelines/ingest.py` did. A turn not
taken within `wait` raises `lock_not_available`, as before.

The ingress caches inbox look-ups; with thousands of inboxes that each send now and then, a lifetime of
seconds made most deliveries a look-up. Triggers on `inboxes` (any change, an insert that may end a cached
"no such inbox" too) and on `tenants` (its standing: disabled or deleted) now tell every listening web
process in the transaction that makes the change (`pg_notify('intake_inboxes', inbox id | 'tenant:' id)`,
sent at its commit), so entries can live for minutes and still go the moment their row changes
(`workers/web/inboxes.py`).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION intake_ingest_take(t uuid, ids uuid[], statuses text[], wait text, n integer)
RETURNS TABLE (id uuid, inbox_id uuid, channel text, content_type text, headers text, body bytea,
               received_at timestamptz, body_purged_at timestamptz, settings text, own boolean)
LANGUAGE plpgsql SECURITY INVOKER
-- Planned for each call's tenant: a plan cached for any tenant reads every tenant's waiting rows to top up.
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    PERFORM set_config('app.tenant_id', t::text, true);
    IF cardinality(ids) > 0 AND NOT EXISTS (
        SELECT 1 FROM inbound_events e WHERE e.tenant_id = t AND e.id = ANY(ids) AND e.status = ANY(statuses)
    ) THEN
        RETURN;  -- another job's batch took them all
    END IF;
    PERFORM set_config('lock_timeout', wait, true);
    PERFORM pg_advisory_xact_lock(hashtextextended('intake.ingest:' || t::text, 0));
    RETURN QUERY
        SELECT e.id, e.inbox_id, e.channel, e.content_type, CAST(e.headers AS text), e.body, e.received_at,
               e.body_purged_at, CAST(i.settings AS text), true
        FROM unnest(ids) AS u(id)
        JOIN inbound_events e ON e.tenant_id = t AND e.id = u.id
        JOIN inboxes i ON i.id = e.inbox_id
        WHERE e.status = ANY(statuses)
        ORDER BY e.received_at, e.id
        FOR UPDATE OF e;
    IF n > 0 THEN
        -- One table in FROM, so the plan is the waiting index read in order up to the limit (see
        -- LOAD_WAITING's history in docs/performance.md); each inbox's settings by primary key.
        RETURN QUERY
            SELECT e.id, e.inbox_id, e.channel, e.content_type, CAST(e.headers AS text), e.body, e.received_at,
                   e.body_purged_at, (SELECT CAST(i.settings AS text) FROM inboxes i WHERE i.id = e.inbox_id), false
            FROM inbound_events e
            WHERE e.tenant_id = t AND e.status = 'received' AND e.id <> ALL(ids)
            ORDER BY e.received_at
            LIMIT n
            FOR UPDATE OF e SKIP LOCKED;
    END IF;
END
$$;

CREATE FUNCTION intake_inbox_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('intake_inboxes', 'tenant:' || OLD.id::text);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('intake_inboxes', NEW.id::text);
    ELSE
        PERFORM pg_notify('intake_inboxes', OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER inboxes_tell_ingress AFTER INSERT OR UPDATE OR DELETE ON inboxes
    FOR EACH ROW EXECUTE FUNCTION intake_inbox_changed();
CREATE TRIGGER tenants_tell_ingress AFTER UPDATE OF disabled_at OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION intake_inbox_changed();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TRIGGER tenants_tell_ingress ON tenants")
    op.execute("DROP TRIGGER inboxes_tell_ingress ON inboxes")
    op.execute("DROP FUNCTION intake_inbox_changed()")
    op.execute("DROP FUNCTION intake_ingest_take(uuid, uuid[], text[], text, integer)")
