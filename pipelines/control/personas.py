"""AI personas: the voice of drafted replies. A tenant has at most one default persona; an inbox may name
its own (`inboxes.persona_id`), else drafts use the default, else the built-in one. An inactive persona
(`active` false) is skipped in that order; its model, temperature and `max_tokens` reach the provider
(`pipelines.assist.load`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, text, update

from db.schema import ai_personas
from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.common import changed_fields, one, paged, refusals
from pipelines.control.errors import Forbidden
from pipelines.control.models import Deleted, Listing, Page, PersonaCreate, PersonaUpdate, PersonaView

DUPLICATE = "the tenant has a persona with this name"
COLUMNS = tuple(PersonaView.model_fields)


def _view(row: Any) -> PersonaView:
    """A persona from a row as `get` reads it or a mapping as `paged` does: both name columns as attributes."""
    return PersonaView.model_validate({name: getattr(row, name) for name in COLUMNS})


def _snapshot(view: PersonaView) -> dict[str, Any]:
    return view.model_dump(mode="json", exclude={"created_at", "updated_at"})


def get(conn: Connection, persona_id: uuid.UUID) -> PersonaView:
    row = conn.execute(select(ai_personas).where(ai_personas.c.id == persona_id)).first()
    return _view(one(row, "persona", persona_id))


def list_personas(conn: Connection, tenant: uuid.UUID, page: Page) -> Listing[PersonaView]:
    query = select(ai_personas).where(ai_personas.c.tenant_id == tenant).order_by(ai_personas.c.name)
    return paged(conn, query, page, _view)


# Changes of a tenant's default take turns: two at once would each clear the old default, and the second's
# new default would then break the one-default index (a 409 that names no real conflict). Transaction-level:
# the turn ends with the commit that makes the new default visible to the next.
DEFAULT_TURN = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def _clear_default(conn: Connection, tenant: uuid.UUID) -> None:
    """Only one default per tenant: the new one takes over from the old (which stays, not the default)."""
    conn.execute(DEFAULT_TURN, {"key": f"intake.persona-default:{tenant}"})
    conn.execute(update(ai_personas).where(ai_personas.c.tenant_id == tenant, ai_personas.c.is_default)
                 .values(is_default=False))


def _guard_model(before: str | None, after: str | None, actor: audit.Actor) -> None:
    """The AI model spends the operator's money: a tenant key may keep a persona's model, not choose one."""
    if before != after and not actor.operator:
        raise Forbidden("model: only an operator key can choose a persona's AI model")


def create(conn: Connection, tenant: TenantId, request: PersonaCreate, actor: audit.Actor) -> PersonaView:
    _guard_model(None, request.model, actor)
    persona_id = uuid.uuid4()
    if request.is_default:
        _clear_default(conn, tenant)
    with refusals(conflict=DUPLICATE):
        conn.execute(insert(ai_personas).values(id=persona_id, tenant_id=tenant, **request.model_dump()))
    view = get(conn, persona_id)
    audit.record(conn, actor=actor, action="persona.create", tenant_id=tenant, subject_type="persona",
                 subject_id=persona_id, after=_snapshot(view))
    return view


def change(conn: Connection, persona_id: uuid.UUID, request: PersonaUpdate, actor: audit.Actor) -> PersonaView:
    before = get(conn, persona_id)
    values = changed_fields(request, skip_null=("name", "tone", "system_prompt", "is_default", "active"))
    if "model" in values:
        _guard_model(before.model, values["model"], actor)
    if values.get("is_default"):
        _clear_default(conn, before.tenant_id)
    if values:
        with refusals(conflict=DUPLICATE):
            conn.execute(update(ai_personas).where(ai_personas.c.id == persona_id)
                         .values(**values, updated_at=func.now()))
    after = get(conn, persona_id)
    audit.record(conn, actor=actor, action="persona.update", tenant_id=before.tenant_id, subject_type="persona",
                 subject_id=persona_id, before=_snapshot(before), after=_snapshot(after))
    return after


def remove(conn: Connection, persona_id: uuid.UUID, actor: audit.Actor) -> Deleted:
    """Delete a persona; inboxes that chose it fall back to the tenant's default."""
    before = get(conn, persona_id)
    conn.execute(delete(ai_personas).where(ai_personas.c.id == persona_id))
    audit.record(conn, actor=actor, action="persona.delete", tenant_id=before.tenant_id, subject_type="persona",
                 subject_id=persona_id, before=_snapshot(before))
    return Deleted(id=persona_id)
