"""Tenant export: every row of one tenant, as JSON Lines per table in a ZIP archive, with a manifest.

The archive (`intake-export/1`) holds:

- `<table>.jsonl` for `tenants` and every table with a `tenant_id`: one JSON object per row, columns by
  name, rows in primary-key order. Values are PostgreSQL's own JSON renderings (`row_to_json`): uuids,
  times (ISO 8601, UTC) and vectors as strings, numbers as numbers, arrays as arrays, `bytea` as a
  `"\\x<hex>"` string, JSON columns nested. Generated columns (the knowledge search vector) are left out.
  `json_populate_recordset(NULL::<table>, ...)` reads every line back into its table.
- `manifest.json`: format, tenant, time of export, per table its file, row count and SHA-256 of the file,
  and `checksum`, the SHA-256 of the lines `<table> <rows> <sha256>` in manifest order.
- `README.txt`: this description.

It is read in one REPEATABLE READ transaction bound to the tenant, under row-level security as the fleet's
role sees it (the caller opens it), through a server-side cursor in batches: memory stays flat however
many rows there are.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Table, Text, cast, func, select, text

from db.tenancy import TenantId
from pipelines.lifecycle.errors import LifecycleError
from pipelines.lifecycle.tables import order_columns, owned_by, stored_columns, tenant_tables

FORMAT = "intake-export/1"
BATCH = 2000


class ExportError(LifecycleError):
    """The archive cannot be written where asked."""


@dataclass
class Manifest:
    tenant_id: str
    exported_at: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def checksum(self) -> str:
        return checksum(self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "tenant_id": self.tenant_id, "exported_at": self.exported_at,
                "tables": self.tables, "checksum": self.checksum}


def checksum(tables: dict[str, dict[str, Any]]) -> str:
    lines = "".join(f"{name} {entry['rows']} {entry['sha256']}\n" for name, entry in tables.items())
    return hashlib.sha256(lines.encode()).hexdigest()


def count_rows(conn: Connection, tenant: TenantId) -> dict[str, int]:
    """Rows per table, for a progress bar's total."""
    return {table.name: int(conn.execute(select(func.count()).select_from(table)
                                         .where(owned_by(table, tenant))).scalar_one())
            for table in tenant_tables()}


def export_tenant(conn: Connection, tenant: TenantId, out: Path, *,
                  on_rows: Callable[[int], None] | None = None) -> Manifest:
    """Write the tenant's archive to `out` (atomically: a partial file never has the final name)."""
    if out.exists():
        raise ExportError(f"{out} exists already; choose a new path")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} is not a directory")
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    manifest = Manifest(str(tenant), datetime.now(UTC).isoformat())
    partial = out.with_name(out.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for table in tenant_tables():
                manifest.tables[str(table.name)] = _write_table(conn, tenant, table, archive, on_rows)
            archive.writestr("manifest.json", orjson.dumps(manifest.as_dict(), option=orjson.OPT_INDENT_2))
            archive.writestr("README.txt", (__doc__ or "").split("\n\n", 1)[1])
        os.replace(partial, out)
    except OSError as exc:  # not writable, disk full: the path's fault, not the data's
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return manifest


def _write_table(conn: Connection, tenant: TenantId, table: Table, archive: zipfile.ZipFile,
                 on_rows: Callable[[int], None] | None) -> dict[str, Any]:
    digest = hashlib.sha256()
    rows = 0
    name = f"{table.name}.jsonl"
    with archive.open(name, "w", force_zip64=True) as member:
        for lines in table_lines(conn, tenant, table):
            chunk = b"".join(line + b"\n" for line in lines)
            digest.update(chunk)
            member.write(chunk)
            rows += len(lines)
            if on_rows is not None:
                on_rows(len(lines))
    return {"file": name, "rows": rows, "sha256": digest.hexdigest()}


def table_lines(conn: Connection, tenant: TenantId, table: Table) -> Iterator[list[bytes]]:
    """The tenant's rows of `table` as JSON lines, a batch at a time, from a server-side cursor."""
    rows = (select(*stored_columns(table)).where(owned_by(table, tenant))
            .order_by(*order_columns(table)).subquery("r"))
    statement = select(cast(func.row_to_json(rows.table_valued()), Text))
    result = conn.execute(statement, execution_options={"stream_results": True, "yield_per": BATCH})
    for partition in result.partitions(BATCH):
        yield [row[0].encode() for row in partition]
