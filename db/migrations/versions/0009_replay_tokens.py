"""Every one-time webhook token is claimed in PostgreSQL, in the group commit that brings it.

Mailgun signs only (timestamp, token), not the body: a captured triple could carry another body, so each
token is accepted once, by the whole fleet, whatever happens to Redis. `replay_tokens` holds one claim per
(tenant, inbox, token), with the delivery that made it: its dedupe key and the SHA-256 of its bytes
(computed by the ingress, several times faster than PostgreSQL's decode and digest of a large body). Every
delivery that carries a token claims it, also a provider's retry of an event already stored: a retry may
come with a fresh token, and a token left unclaimed could be used once more around another body.

For each tenant's rows, `intake_store_events` tells three outcomes apart:

- replayed: the token is held by another delivery (another dedupe key, or the same key with other bytes):
  a captured signature around another body. The row is not stored, the ingress answers 401.
- stored: a new event.
- duplicate: the dedupe key is already stored (a provider's retry), acknowledged again. A retry that
  brings its token back with the same bytes matches its own claim; one with a fresh token claims it.

Rows arrive in groups per tenant; a group lists its rows' `tokens` when it has any, each with its row's
place in the batch (`item`), by which the function names the replayed ones. Only such groups claim (in
token order, so that concurrent batches take the claims' locks in one order too; of two rows with one token
the earlier arrival wins) and then look the tokens up (a later statement, so it sees the claims concurrent
batches committed meanwhile). Every group then runs migration 0006's insert, less the replayed rows: a group
without tokens runs that one statement alone. The batch document is parsed once (migration 0006 parsed
each group again for each field it read).

A claim matters only while its timestamp could still be accepted, 2 x INTAKE_WEBHOOK_TOLERANCE_SECONDS:
the clock deletes older ones (with the maintenance role, across tenants). The table holds about ten minutes
of traffic, so the clock scans it rather than every claim paying for an index on `claimed_at`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

REPLAY_TOKENS = """
CREATE TABLE replay_tokens (
    tenant_id       uuid NOT NULL,
    inbox_id        uuid NOT NULL,
    token           text NOT NULL,
    dedupe_key      text NOT NULL,
    body_digest     bytea NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, inbox_id, token),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id) ON DELETE CASCADE
);
GRANT SELECT, INSERT, UPDATE, DELETE ON replay_tokens TO intake_app;
GRANT SELECT, DELETE ON replay_tokens TO intake_maintenance;
ALTER TABLE replay_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE replay_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON replay_tokens
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY maintenance ON replay_tokens TO intake_maintenance USING (true);
"""

STORE_EVENTS = """
CREATE FUNCTION intake_store_events(batch json)
RETURNS TABLE (event_tenant_id uuid, event_id uuid, event_inbox_id uuid, event_dedupe_key text,
               replayed_item integer)
LANGUAGE plpgsql
AS $$
DECLARE
    tenant uuid;
    tenant_rows json;
    tokens json;
    replayed integer[];
BEGIN
    -- [{"tenant": uuid, "rows": [{inbox_id, channel, dedupe_key, content_type, headers, body, received_at,
    --   item?}], "tokens"?: [{item, inbox_id, dedupe_key, token, body_digest}]}]
    -- A row with a token has its `item` (its place in the batch), and its token is in `tokens` with the hex
    -- SHA-256 of the row's body. Rows arrive sorted by (tenant, inbox, dedupe key): concurrent batches take
    -- the unique index's locks in one order and cannot deadlock. The batch is parsed once, here, and each
    -- tenant's rows once more by the insert.
    FOR tenant, tenant_rows, tokens IN
        SELECT g.tenant, g.rows, g.tokens FROM json_to_recordset(batch) AS g(tenant uuid, rows json, tokens json)
    LOOP
        PERFORM set_config('app.tenant_id', tenant::text, true);
        replayed := '{}';
        IF tokens IS NOT NULL THEN
            -- In token order, then the order of arrival: of two rows with one token, the earlier claims it.
            -- A token already held is left out here (after its holder commits, if it has not yet).
            INSERT INTO replay_tokens (tenant_id, inbox_id, token, dedupe_key, body_digest)
            SELECT tenant, t.inbox_id, t.token, t.dedupe_key, decode(t.body_digest, 'hex')
            FROM json_to_recordset(tokens)
                 AS t(item integer, inbox_id uuid, dedupe_key text, token text, body_digest text)
            ORDER BY t.inbox_id, t.token, t.item
            ON CONFLICT DO NOTHING;
            -- Each row now finds its token's claim: its own, or another delivery's.
            replayed := ARRAY(
                SELECT t.item
                FROM json_to_recordset(tokens)
                     AS t(item integer, inbox_id uuid, dedupe_key text, token text, body_digest text)
                JOIN replay_tokens c ON c.tenant_id = tenant AND c.inbox_id = t.inbox_id AND c.token = t.token
                WHERE c.dedupe_key <> t.dedupe_key OR c.body_digest <> decode(t.body_digest, 'hex'));
            RETURN QUERY SELECT tenant, NULL::uuid, NULL::uuid, NULL::text, item FROM unnest(replayed) AS item;
        END IF;
        RETURN QUERY
        INSERT INTO inbound_events AS e
               (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, received_at)
        SELECT tenant, r.inbox_id, r.channel, r.dedupe_key, r.content_type, r.headers,
               decode(r.body, 'base64'), r.received_at
        FROM json_to_recordset(tenant_rows)
             AS r(item integer, inbox_id uuid, channel text, dedupe_key text, content_type text, headers jsonb,
                  body text, received_at timestamptz)
        WHERE r.item IS NULL OR r.item <> ALL (replayed)
        ON CONFLICT (tenant_id, inbox_id, dedupe_key) DO NOTHING
        RETURNING e.tenant_id, e.id, e.inbox_id, e.dedupe_key, NULL::integer;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$
"""

# Migration 0006's function, restored by the downgrade.
STORE_EVENTS_0006 = """
CREATE FUNCTION intake_store_events(batch json)
RETURNS TABLE (event_tenant_id uuid, event_id uuid, event_inbox_id uuid, event_dedupe_key text)
LANGUAGE plpgsql
AS $$
DECLARE
    tenant_rows json;
BEGIN
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
    op.execute(REPLAY_TOKENS)
    op.execute("DROP FUNCTION intake_store_events(json)")
    op.execute(STORE_EVENTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION intake_store_events(json)")
    op.execute(STORE_EVENTS_0006)
    op.execute("DROP TABLE replay_tokens")
