"""The control plane: API keys, AI personas, disabled tenants, secret rotation, a fuller audit trail.

- `api_keys`: a key is stored as the SHA-256 of its text with its first characters (`prefix`) to find it;
  the text itself is shown once. `tenant_id` NULL is an operator key. The admin process looks keys up
  before it knows a tenant, as the maintenance role.
- `ai_personas`: the voice of drafted replies, one row each (at most one default per tenant), chosen per
  inbox by `inboxes.persona_id`. A persona kept in `tenants.settings.ai.persona` moves into a default row.
- `tenants.disabled_at`: a disabled tenant's inboxes answer 404 at the ingress; nothing is deleted.
- `inboxes.previous_secrets` (sealed like `secrets`) verify too until `previous_secrets_until`: a rotation's
  overlap window.
- `audit_logs`: who (`actor`, and `actor_key_id` for an API key), what (`action`, `subject_type`,
  `subject_id`), `before` and `after` (never a secret), `request_id`. Operator actions that belong to no
  tenant (an operator key's creation) have a NULL `tenant_id`, which only the maintenance role reads.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid REFERENCES tenants ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    prefix          text NOT NULL UNIQUE,
    key_hash        bytea NOT NULL,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE ai_personas (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    tone            text NOT NULL DEFAULT '',
    system_prompt   text NOT NULL DEFAULT '',
    language        text CHECK (length(language) = 2),
    model           text,
    temperature     real CHECK (temperature BETWEEN 0 AND 2),
    is_default      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX ai_personas_one_default_idx ON ai_personas (tenant_id) WHERE is_default;

ALTER TABLE tenants ADD COLUMN disabled_at timestamptz;
ALTER TABLE inboxes ADD COLUMN previous_secrets text;
ALTER TABLE inboxes ADD COLUMN previous_secrets_until timestamptz;
ALTER TABLE inboxes ADD COLUMN persona_id uuid;
ALTER TABLE inboxes ADD CONSTRAINT inboxes_tenant_id_persona_id_fkey FOREIGN KEY (tenant_id, persona_id)
    REFERENCES ai_personas (tenant_id, id) ON DELETE SET NULL (persona_id);

ALTER TABLE audit_logs ALTER COLUMN tenant_id DROP NOT NULL;
ALTER TABLE audit_logs ADD COLUMN actor_key_id uuid;
ALTER TABLE audit_logs ADD COLUMN before jsonb;
ALTER TABLE audit_logs ADD COLUMN after jsonb;
ALTER TABLE audit_logs ADD COLUMN request_id text;
CREATE INDEX audit_logs_time_idx ON audit_logs (created_at DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON api_keys, ai_personas TO intake_app;
GRANT SELECT, UPDATE ON api_keys TO intake_maintenance;
GRANT SELECT, INSERT ON audit_logs TO intake_maintenance;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (tenant_id = {CURRENT_TENANT});
CREATE POLICY maintenance ON api_keys TO intake_maintenance USING (true);
ALTER TABLE ai_personas ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_personas FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ai_personas USING (tenant_id = {CURRENT_TENANT});
CREATE POLICY maintenance ON audit_logs TO intake_maintenance USING (true);
-- The admin process finds which tenant a team or persona id belongs to before it binds that tenant.
GRANT SELECT ON teams, ai_personas TO intake_maintenance;
CREATE POLICY maintenance ON teams FOR SELECT TO intake_maintenance USING (true);
CREATE POLICY maintenance ON ai_personas FOR SELECT TO intake_maintenance USING (true);

-- Every tenant's persona: FORCE row-level security binds the owner (unless a superuser), and no tenant is set.
ALTER TABLE ai_personas NO FORCE ROW LEVEL SECURITY;
INSERT INTO ai_personas (tenant_id, name, tone, system_prompt, language, is_default)
SELECT id,
       left(coalesce(nullif(settings #>> '{{ai,persona,name}}', ''), 'Customer support'), 200),
       coalesce(settings #>> '{{ai,persona,tone}}', ''),
       coalesce(settings #>> '{{ai,persona,system_prompt}}', ''),
       CASE WHEN length(settings #>> '{{ai,persona,language}}') = 2 THEN settings #>> '{{ai,persona,language}}' END,
       true
FROM tenants WHERE jsonb_typeof(settings #> '{{ai,persona}}') = 'object';
ALTER TABLE ai_personas FORCE ROW LEVEL SECURITY;
UPDATE tenants SET settings = settings #- '{{ai,persona}}' WHERE settings #> '{{ai,persona}}' IS NOT NULL;
"""

# Each tenant's default persona goes back into its settings, as upgrade() found it. The maintenance policies
# (the owner is a member of intake_maintenance) let these statements see every tenant's rows; they run
# before the policies go.
DOWNGRADE = """
UPDATE tenants t SET settings = jsonb_set(t.settings, '{ai}', CASE jsonb_typeof(t.settings -> 'ai')
        WHEN 'object' THEN t.settings -> 'ai' ELSE '{}'::jsonb END || jsonb_build_object('persona', p.persona))
FROM (SELECT tenant_id, jsonb_strip_nulls(jsonb_build_object('name', name, 'tone', tone,
                                                             'system_prompt', system_prompt, 'language', language))
             AS persona
      FROM ai_personas WHERE is_default) p
WHERE p.tenant_id = t.id;
DELETE FROM audit_logs WHERE tenant_id IS NULL;
DROP POLICY maintenance ON audit_logs;
DROP POLICY maintenance ON teams;
REVOKE SELECT ON teams FROM intake_maintenance;
DROP INDEX audit_logs_time_idx;
ALTER TABLE audit_logs DROP COLUMN request_id, DROP COLUMN after, DROP COLUMN before, DROP COLUMN actor_key_id;
ALTER TABLE audit_logs ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE inboxes DROP CONSTRAINT inboxes_tenant_id_persona_id_fkey;
ALTER TABLE inboxes DROP COLUMN persona_id, DROP COLUMN previous_secrets_until, DROP COLUMN previous_secrets;
ALTER TABLE tenants DROP COLUMN disabled_at;
REVOKE SELECT, INSERT ON audit_logs FROM intake_maintenance;
REVOKE SELECT, UPDATE ON api_keys FROM intake_maintenance;
DROP TABLE ai_personas;
DROP TABLE api_keys;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
