"""Tenants: create, list, show, update (name and settings), disable and enable.

A disabled tenant keeps every row; its inboxes answer 404 at the ingress (within the ingress's inbox cache
time) until it is enabled again.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, func, select, update

from db.schema import tenants
from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.common import one, paged
from pipelines.control.models import Listing, Page, TenantCreate, TenantUpdate, TenantView
from pipelines.control.settings import OPERATOR_TENANT_SETTINGS, TenantSettings, guard, initial, merged
from pipelines.inboxes import create_tenant


def _view(row: Any) -> TenantView:
    return TenantView(id=row.id, name=row.name, settings=row.settings or {}, disabled=row.disabled_at is not None,
                      disabled_at=row.disabled_at, created_at=row.created_at)


def _snapshot(view: TenantView) -> dict[str, Any]:
    return view.model_dump(mode="json", exclude={"created_at"})


def get(conn: Connection, tenant_id: uuid.UUID, *, lock: bool = False) -> TenantView:
    query = select(tenants).where(tenants.c.id == tenant_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    return _view(one(row, "tenant", tenant_id))


def list_tenants(conn: Connection, page: Page) -> Listing[TenantView]:
    """Every tenant the connection may see (an operator: all; a tenant key: its own), oldest first."""
    return paged(conn, select(tenants).order_by(tenants.c.created_at, tenants.c.id), page, _view)


def create(conn: Connection, request: TenantCreate, actor: audit.Actor) -> TenantView:
    """A new tenant; the transaction is bound to it."""
    settings = initial(request.settings)
    guard({}, settings, OPERATOR_TENANT_SETTINGS, actor)
    tenant_id = create_tenant(conn, request.name, settings)
    view = get(conn, tenant_id)
    audit.record(conn, actor=actor, action="tenant.create", tenant_id=tenant_id, subject_type="tenant",
                 subject_id=tenant_id, after=_snapshot(view))
    return view


def change(conn: Connection, tenant_id: TenantId, request: TenantUpdate, actor: audit.Actor) -> TenantView:
    before = get(conn, tenant_id, lock=True)
    values: dict[str, Any] = {}
    if request.name is not None:
        values["name"] = request.name
    if request.settings is not None:
        values["settings"] = merged(before.settings, request.settings, TenantSettings)
        guard(before.settings, values["settings"], OPERATOR_TENANT_SETTINGS, actor)
    if values:
        conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**values))
    after = get(conn, tenant_id)
    audit.record(conn, actor=actor, action="tenant.update", tenant_id=tenant_id, subject_type="tenant",
                 subject_id=tenant_id, before=_snapshot(before), after=_snapshot(after))
    return after


def set_disabled(conn: Connection, tenant_id: TenantId, disabled: bool, actor: audit.Actor) -> TenantView:
    before = get(conn, tenant_id, lock=True)
    if before.disabled != disabled:
        conn.execute(update(tenants).where(tenants.c.id == tenant_id)
                     .values(disabled_at=func.now() if disabled else None))
    after = get(conn, tenant_id)
    audit.record(conn, actor=actor, action="tenant.disable" if disabled else "tenant.enable", tenant_id=tenant_id,
                 subject_type="tenant", subject_id=tenant_id, before=_snapshot(before), after=_snapshot(after))
    return after
