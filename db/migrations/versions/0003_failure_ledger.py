"""The failure ledger: untenanted failures, and the indexes the operators' filters use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- A job that names no valid tenant can still be recorded, and then only the maintenance role reads it.
    CREATE POLICY untenanted_failures ON job_failures FOR INSERT WITH CHECK (tenant_id IS NULL);
    CREATE INDEX job_failures_tenant_time_idx ON job_failures (tenant_id, last_failed_at DESC);
    CREATE INDEX job_failures_actor_idx ON job_failures (queue, actor, status);
    CREATE INDEX inbound_events_status_idx ON inbound_events (status, received_at DESC);
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX inbound_events_status_idx;
    DROP INDEX job_failures_actor_idx;
    DROP INDEX job_failures_tenant_time_idx;
    DROP POLICY untenanted_failures ON job_failures;
    """)
