"""The tables that hold a tenant's data, in an order that respects their references, from the declared schema."""

from __future__ import annotations

import uuid

from sqlalchemy import Column, ColumnElement, Table

from db.schema import metadata

# Columns that tell how old a table's rows are, in order of preference.
TIME_COLUMNS = ("created_at", "received_at", "first_failed_at", "claimed_at", "month")


def tenant_tables() -> list[Table]:
    """`tenants` first, then every table with a `tenant_id`, each after the tables it references."""
    return [t for t in metadata.sorted_tables if t.name == "tenants" or "tenant_id" in t.c]


def stored_columns(table: Table) -> list[Column[object]]:
    """The columns a table stores (generated ones, such as a search vector, are derived on the way in)."""
    return [c for c in table.c if c.computed is None]


def order_columns(table: Table) -> list[Column[object]]:
    return list(table.primary_key.columns)


def time_column(table: Table) -> Column[object] | None:
    return next((table.c[name] for name in TIME_COLUMNS if name in table.c), None)


def owned_by(table: Table, tenant: uuid.UUID) -> ColumnElement[bool]:
    """The condition that selects one tenant's rows of `table`."""
    return (table.c.id if table.name == "tenants" else table.c.tenant_id) == tenant
