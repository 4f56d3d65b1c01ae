"""Replies go out through the channel: the claim that keeps a reply from being sent twice, and the statuses
that arrive before their message is known.

`messages.send_claimed_at` is set, in a short transaction of its own, by the one worker that is about to call
the provider for a queued reply; the provider is called outside any transaction, and the answer is recorded
in another. A second job for the same reply (a duplicate, a redelivery after a crash) finds the claim and does
not send while it is fresh. See pipelines.outbound.

`early_statuses` keeps a provider's delivery status whose message has no row with that provider id yet: a
Twilio or WhatsApp callback can overtake the worker's commit of the id the provider just gave it, while the
reply is claimed. The status is applied, and its row deleted, when the id is recorded; a status of a message
that is not ours (none of the inbox's replies in flight) is not kept, and kept ones go after a day.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

CURRENT_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"

UPGRADE = f"""
ALTER TABLE messages ADD COLUMN send_claimed_at timestamptz;
-- Replies in flight, per inbox: a status is kept for later only while one is (pipelines.outbound.statuses).
CREATE INDEX messages_in_flight_idx ON messages (tenant_id, inbox_id) WHERE send_claimed_at IS NOT NULL;

CREATE TABLE early_statuses (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    inbox_id        uuid NOT NULL,
    external_id     text NOT NULL,
    status          text NOT NULL CONSTRAINT early_statuses_status_check
                    CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    error           text,
    at              timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT early_statuses_tenant_id_inbox_id_external_id_status_key
        UNIQUE (tenant_id, inbox_id, external_id, status),
    CONSTRAINT early_statuses_tenant_id_inbox_id_fkey
        FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id) ON DELETE CASCADE
);

GRANT SELECT, INSERT, UPDATE, DELETE ON early_statuses TO intake_app;
ALTER TABLE early_statuses ENABLE ROW LEVEL SECURITY;
ALTER TABLE early_statuses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON early_statuses USING (tenant_id = {CURRENT_TENANT});
"""

DOWNGRADE = """
DROP TABLE early_statuses;
ALTER TABLE messages DROP COLUMN send_claimed_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
