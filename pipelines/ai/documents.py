"""A tenant's knowledge documents listed and deleted (`intake kb list|delete`, the admin API); `intake kb import`
(`pipelines.knowledge`) adds them. A document's chunks go with it (their foreign key cascades)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.errors import NotFound

LIST = text("""
SELECT id, source, title, chunk_count, embedding_model, created_at, updated_at FROM knowledge_documents
WHERE tenant_id = :t ORDER BY source, id LIMIT :limit OFFSET :offset
""")
DELETE = text("DELETE FROM knowledge_documents WHERE tenant_id = :t AND id = :id RETURNING source, chunk_count")


class DocumentView(BaseModel):
    id: uuid.UUID
    source: str
    title: str
    chunk_count: int
    embedding_model: str
    created_at: datetime
    updated_at: datetime


class DeletedDocument(BaseModel):
    id: uuid.UUID
    source: str
    chunks: int


def list_documents(conn: Connection, tenant: TenantId, *, limit: int, offset: int) -> tuple[list[DocumentView], bool]:
    """A page of the tenant's documents by source, and whether there are more."""
    rows = conn.execute(LIST, {"t": tenant, "limit": limit + 1, "offset": offset}).mappings().all()
    return [DocumentView.model_validate(dict(r)) for r in rows[:limit]], len(rows) > limit


def delete_document(conn: Connection, tenant: TenantId, document_id: uuid.UUID, *,
                    actor: audit.Actor) -> DeletedDocument:
    row = conn.execute(DELETE, {"t": tenant, "id": document_id}).first()
    if row is None:
        raise NotFound(f"no knowledge document {document_id}")
    audit.record(conn, actor=actor, action="kb.document.delete", tenant_id=tenant, subject_type="knowledge_document",
                 subject_id=document_id, before={"source": row.source, "chunks": row.chunk_count})
    return DeletedDocument(id=document_id, source=row.source, chunks=row.chunk_count)
