"""API keys for the admin API: `ik_` and 43 URL-safe characters (256 random bits), shown once.

Only the key's SHA-256 is stored, with its first 12 characters (`prefix`) to find the row. A key of that
much entropy needs no slow hash: guessing one is out of reach, and a stolen table yields no usable key.
Every look-up costs the same whatever the outcome: one indexed query, one hash, one constant-time compare
(against a dummy digest when no row matched), so a wrong, unknown or revoked key cannot be told apart by
the answer or by its timing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, insert, literal_column, or_, select, update

from db.schema import api_keys, tenants
from pipelines import audit
from pipelines.control.common import one, paged
from pipelines.control.models import KeyView, Listing, Page

KEY_PREFIX = "ik_"
PREFIX_LENGTH = 12
_DUMMY_DIGEST = hashlib.sha256(b"no such key").digest()
# last_used_at is written at most this often per key, so busy keys do not write on every request.
LAST_USED_RESOLUTION: ColumnElement[Any] = literal_column("interval '1 minute'")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an operator key (every tenant) or a tenant key (its tenant only)."""

    key_id: uuid.UUID
    name: str
    tenant_id: uuid.UUID | None
    # A tenant key whose tenant is disabled: it authenticates, and is refused everything (403).
    tenant_disabled: bool = False

    @property
    def operator(self) -> bool:
        return self.tenant_id is None

    def actor(self, request_id: str | None = None) -> audit.Actor:
        return audit.Actor(f"key:{self.name}", self.key_id, request_id, operator=self.operator)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _view(row: Any) -> KeyView:
    return KeyView(id=row.id, name=row.name, scope="operator" if row.tenant_id is None else "tenant",
                   tenant_id=row.tenant_id, prefix=row.prefix, created_by=row.created_by, created_at=row.created_at,
                   last_used_at=row.last_used_at, revoked_at=row.revoked_at)


def create(conn: Connection, *, name: str, tenant_id: uuid.UUID | None, actor: audit.Actor) -> tuple[KeyView, str]:
    """A new key and its text (the only time the text exists outside the caller's hands)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    conn.execute(insert(api_keys).values(id=key_id, tenant_id=tenant_id, name=name, prefix=key[:PREFIX_LENGTH],
                                         key_hash=_digest(key), created_by=actor.name))
    view = get(conn, key_id)
    audit.record(conn, actor=actor, action="key.create", tenant_id=tenant_id, subject_type="key", subject_id=key_id,
                 after=view.model_dump(mode="json", exclude={"created_at", "last_used_at"}))
    return view, key


def get(conn: Connection, key_id: uuid.UUID) -> KeyView:
    return _view(one(conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first(), "key", key_id))


def list_keys(conn: Connection, page: Page, *, tenant: uuid.UUID | None = None,
              include_revoked: bool = False) -> Listing[KeyView]:
    query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if tenant is not None:
        query = query.where(api_keys.c.tenant_id == tenant)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return paged(conn, query, page, _view)


def revoke(conn: Connection, key_id: uuid.UUID, actor: audit.Actor) -> KeyView:
    """Revoke a key. Revoking it again changes nothing: the same answer, no second audit row (the row that
    is already there says who revoked it and when)."""
    revoked = conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                           .values(revoked_at=func.now()).returning(api_keys.c.id)).first()
    after = get(conn, key_id)
    if revoked is None:
        return after
    before = after.model_copy(update={"revoked_at": None})
    audit.record(conn, actor=actor, action="key.revoke", tenant_id=before.tenant_id, subject_type="key",
                 subject_id=key_id, before={"revoked_at": before.revoked_at}, after={"revoked_at": after.revoked_at})
    return after


def authenticate(conn: Connection, key: str) -> Principal | None:
    """The principal behind a presented key, or None (unknown, wrong or revoked: one answer). Text that
    cannot be a key (not ASCII, or with a NUL, which PostgreSQL refuses) is looked up under no prefix."""
    prefix = key[:PREFIX_LENGTH] if key.isascii() and "\x00" not in key else ""
    row = conn.execute(select(api_keys.c.id, api_keys.c.name, api_keys.c.tenant_id, api_keys.c.key_hash,
                              api_keys.c.revoked_at, tenants.c.disabled_at)
                       .select_from(api_keys.outerjoin(tenants, tenants.c.id == api_keys.c.tenant_id))
                       .where(api_keys.c.prefix == prefix)).first()
    stored = bytes(row.key_hash) if row is not None else _DUMMY_DIGEST
    matches = hmac.compare_digest(stored, _digest(key))
    if row is None or not matches or row.revoked_at is not None:
        return None
    conn.execute(update(api_keys).where(api_keys.c.id == row.id, or_(
        api_keys.c.last_used_at.is_(None),
        api_keys.c.last_used_at < func.now() - LAST_USED_RESOLUTION))
        .values(last_used_at=func.now()))
    return Principal(row.id, row.name, row.tenant_id, tenant_disabled=row.disabled_at is not None)
