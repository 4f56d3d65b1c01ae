"""The endpoints that create and change tenants and what they own: inboxes, teams, personas and API keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from db.tenancy import TenantId
from pipelines.control import keys, personas, teams, tenants
from pipelines.control.errors import Forbidden
from pipelines.control.models import (
    Deleted,
    InboxCreate,
    InboxSecrets,
    InboxUpdate,
    InboxView,
    KeyCreate,
    KeyView,
    Listing,
    Page,
    PersonaCreate,
    PersonaUpdate,
    PersonaView,
    RotateSecrets,
    TeamCreate,
    TeamUpdate,
    TeamView,
    TenantCreate,
    TenantUpdate,
    TenantView,
)
from workers.admin.http import Call, Endpoint

PREFIX = "/v1/admin"


def _tenant(call: Call) -> TenantId:
    assert call.tenant is not None  # every route that calls this names its tenant
    return TenantId(call.tenant)


# -- tenants -------------------------------------------------------------------------------------------
def list_tenants(call: Call) -> Listing[TenantView]:
    with call.transaction() as conn:
        return tenants.list_tenants(conn, call.query)


def create_tenant(call: Call) -> TenantView:
    with call.transaction() as conn:
        return tenants.create(conn, call.body, call.actor)


def show_tenant(call: Call) -> TenantView:
    with call.transaction() as conn:
        return tenants.get(conn, _tenant(call))


def update_tenant(call: Call) -> TenantView:
    with call.transaction() as conn:
        return tenants.change(conn, _tenant(call), call.body, call.actor)


def disable_tenant(call: Call) -> TenantView:
    with call.transaction() as conn:
        return tenants.set_disabled(conn, _tenant(call), True, call.actor)


def enable_tenant(call: Call) -> TenantView:
    with call.transaction() as conn:
        return tenants.set_disabled(conn, _tenant(call), False, call.actor)


# -- inboxes -------------------------------------------------------------------------------------------
class InboxQuery(Page):
    tenant_id: uuid.UUID | None = None


def list_inboxes(call: Call) -> Listing[InboxView]:
    tenant = call.scope_tenant(call.query.tenant_id)
    with call.transaction() as conn:
        return call.admin.inboxes.list_inboxes(conn, Page(limit=call.query.limit, offset=call.query.offset), tenant)


def list_tenant_inboxes(call: Call) -> Listing[InboxView]:
    with call.transaction() as conn:
        return call.admin.inboxes.list_inboxes(conn, call.query, _tenant(call))


def create_inbox(call: Call) -> InboxSecrets:
    with call.transaction() as conn:
        return call.admin.inboxes.create(conn, _tenant(call), call.body, call.actor)


def show_inbox(call: Call) -> InboxView:
    with call.transaction() as conn:
        return call.admin.inboxes.get(conn, call.ids["inbox_id"])


def update_inbox(call: Call) -> InboxView:
    with call.transaction() as conn:
        return call.admin.inboxes.change(conn, call.ids["inbox_id"], call.body, call.actor)


def disable_inbox(call: Call) -> InboxView:
    with call.transaction() as conn:
        return call.admin.inboxes.set_enabled(conn, call.ids["inbox_id"], False, call.actor)


def enable_inbox(call: Call) -> InboxView:
    with call.transaction() as conn:
        return call.admin.inboxes.set_enabled(conn, call.ids["inbox_id"], True, call.actor)


def rotate_secrets(call: Call) -> InboxSecrets:
    with call.transaction() as conn:
        return call.admin.inboxes.rotate(conn, call.ids["inbox_id"], call.body, call.actor, datetime.now(UTC))


# -- teams and personas --------------------------------------------------------------------------------
def list_teams(call: Call) -> Listing[TeamView]:
    with call.transaction() as conn:
        return teams.list_teams(conn, _tenant(call), call.query)


def create_team(call: Call) -> TeamView:
    with call.transaction() as conn:
        return teams.create(conn, _tenant(call), call.body, call.actor)


def show_team(call: Call) -> TeamView:
    with call.transaction() as conn:
        return teams.get(conn, call.ids["team_id"])


def update_team(call: Call) -> TeamView:
    with call.transaction() as conn:
        return teams.change(conn, call.ids["team_id"], call.body, call.actor)


def delete_team(call: Call) -> Deleted:
    with call.transaction() as conn:
        return teams.remove(conn, call.ids["team_id"], call.actor)


def list_personas(call: Call) -> Listing[PersonaView]:
    with call.transaction() as conn:
        return personas.list_personas(conn, _tenant(call), call.query)


def create_persona(call: Call) -> PersonaView:
    with call.transaction() as conn:
        return personas.create(conn, _tenant(call), call.body, call.actor)


def show_persona(call: Call) -> PersonaView:
    with call.transaction() as conn:
        return personas.get(conn, call.ids["persona_id"])


def update_persona(call: Call) -> PersonaView:
    with call.transaction() as conn:
        return personas.change(conn, call.ids["persona_id"], call.body, call.actor)


def delete_persona(call: Call) -> Deleted:
    with call.transaction() as conn:
        return personas.remove(conn, call.ids["persona_id"], call.actor)


# -- keys ------------------------------------------------------------------------------------------------
class CreatedKey(BaseModel):
    key: KeyView
    secret: str = Field(description="The key itself, shown this once: send it as Authorization: Bearer <secret>")


class KeyQuery(Page):
    tenant_id: uuid.UUID | None = None


def list_keys(call: Call) -> Listing[KeyView]:
    tenant = call.scope_tenant(call.query.tenant_id)
    with call.transaction() as conn:
        return keys.list_keys(conn, Page(limit=call.query.limit, offset=call.query.offset), tenant=tenant)


def create_key(call: Call) -> CreatedKey:
    tenant = call.body.tenant_id
    if tenant is not None:
        call.tenant = tenant
    with call.transaction() as conn:
        if tenant is not None:
            tenants.get(conn, tenant)  # 404 for a tenant that does not exist
        view, secret = keys.create(conn, name=call.body.name, tenant_id=tenant, actor=call.actor)
    return CreatedKey(key=view, secret=secret)


def revoke_key(call: Call) -> KeyView:
    with call.transaction() as conn:
        found = keys.get(conn, call.ids["key_id"])
        if found.id == call.principal.key_id:
            raise Forbidden("a key cannot revoke itself; revoke it with another operator key or the CLI")
        call.tenant = found.tenant_id
    with call.transaction() as conn:
        return keys.revoke(conn, call.ids["key_id"], call.actor)


def endpoints() -> list[Endpoint]:
    t, i = f"{PREFIX}/tenants", f"{PREFIX}/inboxes"
    own_tenant, own_inbox = ("tenant", "tenant_id"), ("inbox", "inbox_id")
    own_team, own_persona = ("team", "team_id"), ("persona", "persona_id")
    return [
        Endpoint("GET", t, "List tenants (a tenant key: its own)", list_tenants, Listing[TenantView], query=Page),
        Endpoint("POST", t, "Create a tenant", create_tenant, TenantView, body=TenantCreate, status=201,
                 operator_only=True),
        Endpoint("GET", t + "/{tenant_id}", "Show a tenant", show_tenant, TenantView, owner=own_tenant),
        Endpoint("PATCH", t + "/{tenant_id}", "Update a tenant's name or settings", update_tenant, TenantView,
                 body=TenantUpdate, owner=own_tenant),
        Endpoint("POST", t + "/{tenant_id}/disable", "Disable a tenant: its inboxes answer 404", disable_tenant,
                 TenantView, owner=own_tenant, operator_only=True),
        Endpoint("POST", t + "/{tenant_id}/enable", "Enable a tenant again", enable_tenant, TenantView,
                 owner=own_tenant, operator_only=True),
        Endpoint("GET", t + "/{tenant_id}/inboxes", "List a tenant's inboxes", list_tenant_inboxes,
                 Listing[InboxView], query=Page, owner=own_tenant),
        Endpoint("POST", t + "/{tenant_id}/inboxes", "Create an inbox; its secrets are shown once", create_inbox,
                 InboxSecrets, body=InboxCreate, status=201, owner=own_tenant),
        Endpoint("GET", i, "List inboxes (optionally of one tenant)", list_inboxes, Listing[InboxView],
                 query=InboxQuery),
        Endpoint("GET", i + "/{inbox_id}", "Show an inbox (secrets masked)", show_inbox, InboxView, owner=own_inbox),
        Endpoint("PATCH", i + "/{inbox_id}", "Update an inbox's name, settings or persona", update_inbox, InboxView,
                 body=InboxUpdate, owner=own_inbox),
        Endpoint("POST", i + "/{inbox_id}/disable", "Disable an inbox: deliveries get 404", disable_inbox,
                 InboxView, owner=own_inbox),
        Endpoint("POST", i + "/{inbox_id}/enable", "Enable an inbox", enable_inbox, InboxView, owner=own_inbox),
        Endpoint("POST", i + "/{inbox_id}/rotate-secrets", "New secrets; the old ones verify during the overlap",
                 rotate_secrets, InboxSecrets, body=RotateSecrets, owner=own_inbox),
        Endpoint("GET", t + "/{tenant_id}/teams", "List a tenant's teams", list_teams, Listing[TeamView],
                 query=Page, owner=own_tenant),
        Endpoint("POST", t + "/{tenant_id}/teams", "Create a team", create_team, TeamView, body=TeamCreate,
                 status=201, owner=own_tenant),
        Endpoint("GET", f"{PREFIX}/teams/{{team_id}}", "Show a team", show_team, TeamView, owner=own_team),
        Endpoint("PATCH", f"{PREFIX}/teams/{{team_id}}", "Update a team", update_team, TeamView, body=TeamUpdate,
                 owner=own_team),
        Endpoint("DELETE", f"{PREFIX}/teams/{{team_id}}", "Delete a team", delete_team, Deleted, owner=own_team),
        Endpoint("GET", t + "/{tenant_id}/personas", "List a tenant's AI personas", list_personas,
                 Listing[PersonaView], query=Page, owner=own_tenant),
        Endpoint("POST", t + "/{tenant_id}/personas", "Create an AI persona", create_persona, PersonaView,
                 body=PersonaCreate, status=201, owner=own_tenant),
        Endpoint("GET", f"{PREFIX}/personas/{{persona_id}}", "Show an AI persona", show_persona, PersonaView,
                 owner=own_persona),
        Endpoint("PATCH", f"{PREFIX}/personas/{{persona_id}}", "Update an AI persona", update_persona, PersonaView,
                 body=PersonaUpdate, owner=own_persona),
        Endpoint("DELETE", f"{PREFIX}/personas/{{persona_id}}", "Delete an AI persona", delete_persona, Deleted,
                 owner=own_persona),
        Endpoint("GET", f"{PREFIX}/keys", "List API keys that are not revoked (a tenant key: its tenant's)",
                 list_keys, Listing[KeyView], query=KeyQuery),
        Endpoint("POST", f"{PREFIX}/keys", "Create an API key; the key is shown once", create_key, CreatedKey,
                 body=KeyCreate, status=201, operator_only=True),
        Endpoint("POST", f"{PREFIX}/keys/{{key_id}}/revoke", "Revoke an API key", revoke_key, KeyView,
                 operator_only=True),
    ]
