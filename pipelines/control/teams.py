"""Teams a message can be suggested to: create, list, update, delete."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from db import schema
from db.schema import teams
from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.common import changed_fields, one, paged, refusals
from pipelines.control.models import Deleted, Listing, Page, TeamCreate, TeamUpdate, TeamView

DUPLICATE = "the tenant has a team with this name"


def _view(row: Any) -> TeamView:
    return TeamView(id=row.id, tenant_id=row.tenant_id, name=row.name, description=row.description,
                    keywords=list(row.keywords or []), created_at=row.created_at)


def _snapshot(view: TeamView) -> dict[str, Any]:
    return view.model_dump(mode="json", exclude={"created_at"})


def get(conn: Connection, team_id: uuid.UUID) -> TeamView:
    return _view(one(conn.execute(select(teams).where(teams.c.id == team_id)).first(), "team", team_id))


def list_teams(conn: Connection, tenant: uuid.UUID, page: Page) -> Listing[TeamView]:
    query = select(teams).where(teams.c.tenant_id == tenant).order_by(teams.c.name, teams.c.id)
    return paged(conn, query, page, _view)


def create(conn: Connection, tenant: TenantId, request: TeamCreate, actor: audit.Actor) -> TeamView:
    team_id = uuid.uuid4()
    with refusals(conflict=DUPLICATE):
        conn.execute(insert(teams).values(id=team_id, tenant_id=tenant, **request.model_dump()))
    view = get(conn, team_id)
    audit.record(conn, actor=actor, action="team.create", tenant_id=tenant, subject_type="team",
                 subject_id=team_id, after=_snapshot(view))
    return view


def change(conn: Connection, team_id: uuid.UUID, request: TeamUpdate, actor: audit.Actor) -> TeamView:
    before = get(conn, team_id)
    values = changed_fields(request, skip_null=("name", "description", "keywords"))
    if values:
        with refusals(conflict=DUPLICATE):
            conn.execute(update(teams).where(teams.c.id == team_id).values(**values))
    after = get(conn, team_id)
    audit.record(conn, actor=actor, action="team.update", tenant_id=before.tenant_id, subject_type="team",
                 subject_id=team_id, before=_snapshot(before), after=_snapshot(after))
    return after


def remove(conn: Connection, team_id: uuid.UUID, actor: audit.Actor) -> Deleted:
    """Delete a team; suggestions that named it keep their rows and lose the reference."""
    before = get(conn, team_id)
    for target in (schema.conversations, schema.ai_classifications):
        conn.execute(update(target).where(target.c.tenant_id == before.tenant_id,
                                          target.c.suggested_team_id == team_id).values(suggested_team_id=None))
    conn.execute(delete(teams).where(teams.c.id == team_id))
    audit.record(conn, actor=actor, action="team.delete", tenant_id=before.tenant_id, subject_type="team",
                 subject_id=team_id, before=_snapshot(before))
    return Deleted(id=team_id)
