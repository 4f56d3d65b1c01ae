"""Roles that fit the job: the ingress's routing policy applies to the fleet's role only.

`inbox_routing` lets a session that names an inbox id (`app.inbox_id`) read that one inbox row before it
knows the tenant: the ingress needs it, nothing else does. Bound to every role it also served any other
role that could set the variable; now it serves only `intake_app` (and the roles that are its members).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER POLICY inbox_routing ON inboxes TO intake_app")


def downgrade() -> None:
    op.execute("ALTER POLICY inbox_routing ON inboxes TO PUBLIC")
