"""messages.stored_at: when the worker stored the message (received_at is when the ingress got it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE messages ADD COLUMN stored_at timestamptz NOT NULL DEFAULT clock_timestamp()")


def downgrade() -> None:
    op.execute("ALTER TABLE messages DROP COLUMN stored_at")
