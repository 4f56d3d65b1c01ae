"""The demo tenant that `intake run` creates: one inbox per channel, with secrets kept in $INTAKE_HOME."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, text

from db.tenancy import bind_tenant
from pipelines.crypto import SecretBox
from pipelines.inboxes import CHANNELS, create_inbox, create_tenant

PROVIDER_ISSUED = {"twilio": "auth_token", "whatsapp": "app_secret", "mailgun": "signing_key"}


def ensure_demo(conn: Connection, box: SecretBox, path: Path) -> dict[str, Any]:
    """The demo tenant recorded at `path`, created (with one inbox per channel) when missing."""
    if path.exists():
        demo: dict[str, Any] = orjson.loads(path.read_bytes())
        bind_tenant(conn, demo["tenant_id"])
        if conn.execute(text("SELECT 1 FROM tenants WHERE id = :t"), {"t": demo["tenant_id"]}).first():
            return demo
    tenant = create_tenant(conn, "Demo")
    inboxes = {}
    for channel in CHANNELS:
        given = {PROVIDER_ISSUED[channel]: secrets.token_hex(16)} if channel in PROVIDER_ISSUED else {}
        inbox = create_inbox(conn, box, tenant, channel, name=f"Demo {channel}", given_secrets=given)
        inboxes[channel] = {"id": str(inbox.id), "secrets": inbox.secrets}
    demo = {"tenant_id": str(tenant), "inboxes": inboxes}
    path.write_bytes(orjson.dumps(demo, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)
    return demo
