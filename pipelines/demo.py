"""The demo tenant that `intake run` creates: one inbox per channel, with secrets kept in $INTAKE_HOME."""

from __future__ import annotations

import os
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
    write_private(path, orjson.dumps(demo, option=orjson.OPT_INDENT_2))
    return demo


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by its owner only from the first byte: the file is created with
    mode 0600 (never written first and narrowed after) and renamed into place, so a reader sees the old
    contents or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)  # a leftover of a crash: O_EXCL makes the file ours, with our mode
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
