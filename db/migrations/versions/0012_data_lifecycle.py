"""Data lifecycle: retention, erasure tombstones, monthly AI usage, SLA policies and due times.

- `inbound_events.body_purged_at`: when retention (or an erasure) removed the raw body. The row and its
  dedupe key stay, so a provider's late retry is still recognised as a duplicate. A partial index lists the
  processed events whose body is still kept, oldest first, so the clock's purge never walks purged rows.
- `job_failures.settled_at`: when a failure was resolved, discarded or replayed (set by a trigger, whatever
  code changes the status); retention counts from it.
- `ai_usage_monthly`: usage rows rolled up per tenant, month, feature, provider and model before retention
  removes them, so the spend of past months stays known.
- `contacts.erased_at`: an erased person's contact row stays as a tombstone (no name, no identities), so the
  conversations and messages that counted them still add up.
- `sla_policies` per tenant and priority, and on `conversations` the SLA clock: `sla_started_at` (when the
  conversation opened or reopened), `first_response_due_at`, `resolution_due_at` and `sla_breached_at`.
- The clock (the maintenance role) applies retention and marks breaches tenant by tenant, bound to each
  tenant like the fleet: it gets the table rights that needs, and one new cross-tenant policy, to read
  `sla_policies` (which tenants have one).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
ALTER TABLE inbound_events ADD COLUMN body_purged_at timestamptz;
CREATE INDEX inbound_events_body_kept_idx ON inbound_events (tenant_id, processed_at)
    WHERE status = 'processed' AND body_purged_at IS NULL;

ALTER TABLE job_failures ADD COLUMN settled_at timestamptz;
CREATE FUNCTION intake_failure_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.settled_at := CASE WHEN NEW.status = 'dead' THEN NULL ELSE now() END;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER job_failures_settled BEFORE UPDATE OF status ON job_failures
    FOR EACH ROW EXECUTE FUNCTION intake_failure_settled();
UPDATE job_failures SET settled_at = coalesce(replayed_at, last_failed_at) WHERE status <> 'dead';

ALTER TABLE contacts ADD COLUMN erased_at timestamptz;

CREATE TABLE ai_usage_monthly (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    month       date NOT NULL,
    feature     text NOT NULL,
    provider    text NOT NULL,
    model       text NOT NULL,
    calls       bigint NOT NULL DEFAULT 0,
    tokens_in   bigint NOT NULL DEFAULT 0,
    tokens_out  bigint NOT NULL DEFAULT 0,
    cost_usd    numeric(16, 6) NOT NULL DEFAULT 0,
    latency_ms  bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, month, feature, provider, model)
);

CREATE TABLE sla_policies (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id               uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    priority                text NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    first_response_minutes  integer CHECK (first_response_minutes > 0),
    resolution_minutes      integer CHECK (resolution_minutes > 0),
    time_zone               text NOT NULL DEFAULT 'UTC',
    business_hours          jsonb,
    holidays                date[] NOT NULL DEFAULT '{{}}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, priority)
);

ALTER TABLE conversations ADD COLUMN sla_started_at timestamptz;
ALTER TABLE conversations ADD COLUMN first_response_due_at timestamptz;
ALTER TABLE conversations ADD COLUMN resolution_due_at timestamptz;
ALTER TABLE conversations ADD COLUMN sla_breached_at timestamptz;
-- The clock's scan: open conversations with a due time and no breach yet.
CREATE INDEX conversations_sla_due_idx ON conversations (tenant_id, first_response_due_at, resolution_due_at)
    WHERE status = 'open' AND sla_breached_at IS NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON ai_usage_monthly, sla_policies TO intake_app;
ALTER TABLE ai_usage_monthly ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_usage_monthly FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ai_usage_monthly USING (tenant_id = {CURRENT_TENANT});
ALTER TABLE sla_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sla_policies USING (tenant_id = {CURRENT_TENANT});

-- The clock, bound to one tenant at a time.
GRANT SELECT, DELETE ON audit_logs, ai_usage TO intake_maintenance;
GRANT SELECT, INSERT, UPDATE ON ai_usage_monthly TO intake_maintenance;
GRANT SELECT ON sla_policies TO intake_maintenance;
-- The clock looks for breaches only in tenants that have a policy.
CREATE POLICY maintenance ON sla_policies FOR SELECT TO intake_maintenance USING (true);
GRANT SELECT (tenant_id, id, status, priority, sla_started_at, first_response_due_at, resolution_due_at,
              sla_breached_at) ON conversations TO intake_maintenance;
GRANT UPDATE (sla_breached_at) ON conversations TO intake_maintenance;
GRANT SELECT (conversation_id, sent_at) ON messages TO intake_maintenance;
"""

DOWNGRADE = """
REVOKE SELECT (conversation_id, sent_at) ON messages FROM intake_maintenance;
REVOKE UPDATE (sla_breached_at) ON conversations FROM intake_maintenance;
REVOKE SELECT (tenant_id, id, status, priority, sla_started_at, first_response_due_at, resolution_due_at,
               sla_breached_at) ON conversations FROM intake_maintenance;
REVOKE DELETE ON audit_logs FROM intake_maintenance;
REVOKE SELECT, DELETE ON ai_usage FROM intake_maintenance;
DROP INDEX conversations_sla_due_idx;
ALTER TABLE conversations DROP COLUMN sla_breached_at, DROP COLUMN resolution_due_at,
    DROP COLUMN first_response_due_at, DROP COLUMN sla_started_at;
DROP TABLE sla_policies;
DROP TABLE ai_usage_monthly;
ALTER TABLE contacts DROP COLUMN erased_at;
DROP TRIGGER job_failures_settled ON job_failures;
DROP FUNCTION intake_failure_settled();
ALTER TABLE job_failures DROP COLUMN settled_at;
DROP INDEX inbound_events_body_kept_idx;
ALTER TABLE inbound_events DROP COLUMN body_purged_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
