"""One-time webhook tokens are claimed in PostgreSQL, in the group commit that stores their delivery.

Mailgun signs only (timestamp, token), not the body: a captured triple could carry another body, so each
token is accepted once. Claimed in Redis (and, when Redis failed, in a dictionary of one web process), a
token worked again on every other web process and after Redis restarted empty. Now the event row carries
its token in `replay_token`, unique per inbox, and `intake_store_events` tells the three outcomes apart:

- stored: a new event (the token, if any, is claimed with it, in the same transaction);
- duplicate: not stored, and the token (if any) is not held by another delivery: the (tenant, inbox,
  dedupe key) is already stored, so this is a provider's retry, acknowledged again;
- replayed: not stored, and the token is held by another delivery (another dedupe key, or the same key
  with other bytes): a captured signature around another body, and the ingress answers 401. A retry that
  brings its token back with the same body stays a duplicate.

Rows arrive in groups per tenant; a group flags `"replay": true` when a row of it carries a token. Only
such groups insert with no conflict target (a used token is left out like a used dedupe key) and then look
up the tokens they could not claim (a later statement of the function, so it sees what concurrent batches
committed meanwhile). Every other group runs migration 0006's statement unchanged.

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

STORE_EVENTS = """
CREATE FUNCTION intake_store_events(batch json)
RETURNS TABLE (event_tenant_id uuid, event_id uuid, event_inbox_id uuid, event_dedupe_key text,
               event_replayed boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    tenant_rows json;
BEGIN
    -- [{"tenant": uuid, "replay": bool?, "rows": [{inbox_id, channel, dedupe_key, content_type, headers,
    --   body, received_at, replay_token?}]}]
    -- Rows arrive sorted by (tenant, inbox, dedupe key): concurrent batches take the unique index's locks
    -- in one order and cannot deadlock.
    FOR tenant_rows IN SELECT json_array_elements(batch) LOOP
        PERFORM set_config('app.tenant_id', tenant_rows->>'tenant', true);
        IF (tenant_rows->>'replay') IS NULL THEN  -- no tokens: exactly migration 0006's statement
            RETURN QUERY
            INSERT INTO inbound_events AS e
                   (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, received_at)
            SELECT (tenant_rows->>'tenant')::uuid, r.inbox_id, r.channel, r.dedupe_key, r.content_type,
                   r.headers, decode(r.body, 'base64'), r.received_at
            FROM json_to_recordset(tenant_rows->'rows')
                 AS r(inbox_id uuid, channel text, dedupe_key text, content_type text, headers jsonb, body text,
                      received_at timestamptz)
            ON CONFLICT (tenant_id, inbox_id, dedupe_key) DO NOTHING
            RETURNING e.tenant_id, e.id, e.inbox_id, e.dedupe_key, false;
        ELSE
            -- No conflict target: a second delivery of a dedupe key and a second use of a token are both
            -- left out here, and told apart below.
            RETURN QUERY
            INSERT INTO inbound_events AS e
                   (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, received_at,
                    replay_token)
            SELECT (tenant_rows->>'tenant')::uuid, r.inbox_id, r.channel, r.dedupe_key, r.content_type,
                   r.headers, decode(r.body, 'base64'), r.received_at, r.replay_token
            FROM json_to_recordset(tenant_rows->'rows')
                 AS r(inbox_id uuid, channel text, dedupe_key text, content_type text, headers jsonb, body text,
                      received_at timestamptz, replay_token text)
            ON CONFLICT DO NOTHING
            RETURNING e.tenant_id, e.id, e.inbox_id, e.dedupe_key, false;
            -- The token is held by another delivery: a replay. A row stored just now holds its own token
            -- with its own received_at; only a later delivery with the same dedupe key pays for the
            -- comparison of bodies.
            RETURN QUERY
            SELECT (tenant_rows->>'tenant')::uuid, NULL::uuid, r.inbox_id, r.dedupe_key, true
            FROM json_to_recordset(tenant_rows->'rows')
                 AS r(inbox_id uuid, dedupe_key text, body text, received_at timestamptz, replay_token text)
            JOIN inbound_events e
              ON e.tenant_id = (tenant_rows->>'tenant')::uuid AND e.inbox_id = r.inbox_id
             AND e.replay_token = r.replay_token
            WHERE e.dedupe_key <> r.dedupe_key
               OR (e.received_at <> r.received_at AND e.body <> decode(r.body, 'base64'));
        END IF;
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
    op.execute("ALTER TABLE inbound_events ADD COLUMN replay_token text")
    op.execute("CREATE UNIQUE INDEX inbound_events_replay_token_key ON inbound_events "
               "(tenant_id, inbox_id, replay_token) WHERE replay_token IS NOT NULL")
    op.execute("DROP FUNCTION intake_store_events(json)")
    op.execute(STORE_EVENTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION intake_store_events(json)")
    op.execute(STORE_EVENTS_0006)
    op.execute("DROP INDEX inbound_events_replay_token_key")
    op.execute("ALTER TABLE inbound_events DROP COLUMN replay_token")
