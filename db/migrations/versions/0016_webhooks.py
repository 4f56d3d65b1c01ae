"""Webhook endpoints and their deliveries: the change feed pushed to the applications downstream.

`webhook_endpoints` holds a tenant's subscribers: a URL, the event types it wants (empty: all), its signing
secret sealed like inbox secrets (and the previous one during a rotation's overlap), whether it is enabled,
and `cursor_seq`, the last event of the tenant's feed already turned into deliveries for it. Moving the
cursor and inserting the deliveries happen in one transaction, so an event is planned for an endpoint once.

`webhook_attempts` is one row per endpoint and event: pending until a 2xx (delivered) or the retry schedule
ends (failed). `leased_until` marks a delivery in flight: a worker that dies holding it leaves a lease that
expires, and the delivery is taken again (at least once; the receiver dedupes on `webhook-id`).
`conversation_id` is copied from the event, so the rule "an event of a conversation waits for the one before
it" is answered from this table's own index.

`intake_webhook_due(limit)` answers, across tenants and with nothing but ids, which endpoints have work:
events past their cursor, or deliveries due. The delivery processes run as the fleet's role, which sees no
tenant until it binds one; this function (SECURITY DEFINER, the owner reading through the maintenance
policies) is the one thing they may ask before that.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
CREATE TABLE webhook_endpoints (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id               uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    url                     text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    event_types             text[] NOT NULL DEFAULT '{{}}',
    description             text NOT NULL DEFAULT '',
    rate_limit_per_second   integer CHECK (rate_limit_per_second > 0),
    secret                  text NOT NULL,
    previous_secret         text,
    previous_secret_until   timestamptz,
    enabled                 boolean NOT NULL DEFAULT true,
    disabled_at             timestamptz,
    disabled_reason         text,
    failing_since           timestamptz,
    cursor_seq              bigint NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id);

CREATE TABLE webhook_attempts (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    endpoint_id         uuid NOT NULL,
    event_seq           bigint NOT NULL,
    event_id            uuid NOT NULL,
    conversation_id     uuid,
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    leased_until        timestamptz,
    last_status_code    integer,
    last_error          text,
    response_excerpt    text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    delivered_at        timestamptz,
    UNIQUE (tenant_id, endpoint_id, event_seq),
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);
-- What is due, per endpoint; and "is an earlier event of this conversation still pending?".
CREATE INDEX webhook_attempts_due_idx ON webhook_attempts (tenant_id, endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_attempts_order_idx ON webhook_attempts (tenant_id, endpoint_id, conversation_id, event_seq)
    WHERE status = 'pending';
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (tenant_id, endpoint_id, event_seq DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_attempts TO intake_app;
ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_endpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_endpoints USING (tenant_id = {CURRENT_TENANT});
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_attempts USING (tenant_id = {CURRENT_TENANT});

-- The admin API finds the tenant an endpoint's id belongs to, and the due function reads across tenants.
GRANT SELECT ON webhook_endpoints, webhook_attempts TO intake_maintenance;
CREATE POLICY maintenance ON webhook_endpoints FOR SELECT TO intake_maintenance USING (true);
CREATE POLICY maintenance ON webhook_attempts FOR SELECT TO intake_maintenance USING (true);
CREATE POLICY webhook_dispatch ON change_feed_heads FOR SELECT TO intake_maintenance USING (true);

CREATE FUNCTION intake_webhook_due(max_rows integer) RETURNS TABLE (tenant_id uuid, endpoint_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT e.tenant_id, e.id FROM webhook_endpoints e
    WHERE e.enabled AND (
        e.cursor_seq < (SELECT h.last_seq FROM change_feed_heads h WHERE h.tenant_id = e.tenant_id)
        OR EXISTS (SELECT 1 FROM webhook_attempts a
                   WHERE a.tenant_id = e.tenant_id AND a.endpoint_id = e.id AND a.status = 'pending'
                     AND a.next_attempt_at <= now() AND (a.leased_until IS NULL OR a.leased_until < now())))
    LIMIT max_rows
$$;
REVOKE ALL ON FUNCTION intake_webhook_due(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION intake_webhook_due(integer) TO intake_app;
"""

DOWNGRADE = """
DROP FUNCTION intake_webhook_due(integer);
DROP POLICY webhook_dispatch ON change_feed_heads;
DROP TABLE webhook_attempts;
DROP TABLE webhook_endpoints;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
