"""Tenant scoping: the `TenantId` type and the one helper that binds a transaction to a tenant.

Row-level security does the enforcing. Every policy compares `tenant_id` with the transaction-local
setting `app.tenant_id`; `set_config(..., true)` scopes it to the current transaction, so a pooled
connection never carries a tenant into the next transaction. Query functions take a `TenantId`, and only
`resolve_tenant` (and the ingress's inbox router) produce one, after the database confirmed the tenant.
"""

from __future__ import annotations

import uuid
from typing import NewType

from sqlalchemy import Connection, text

from db import direct

TenantId = NewType("TenantId", uuid.UUID)


class UnknownTenant(LookupError):
    """No tenant has this id."""


BIND = text("SELECT set_config('app.tenant_id', :t, true)")


def bind_tenant(conn: Connection, tenant_id: TenantId) -> None:
    """Scope the open transaction on `conn` to one tenant (run directly: every job and request does it)."""
    direct.run(conn, BIND, {"t": str(tenant_id)})


def resolve_tenant(conn: Connection, raw: str | uuid.UUID) -> TenantId:
    """Check that `raw` names a tenant and bind the open transaction to it."""
    try:
        candidate = TenantId(raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw)))
    except ValueError:
        raise UnknownTenant(f"not a tenant id: {raw!r}") from None
    bind_tenant(conn, candidate)
    found = conn.execute(text("SELECT 1 FROM tenants WHERE id = :t"), {"t": candidate}).first()
    if found is None:
        raise UnknownTenant(f"no tenant {candidate}")
    return candidate


def new_tenant_id() -> TenantId:
    """The id for a tenant about to be created (the only other source of a TenantId)."""
    return TenantId(uuid.uuid4())
