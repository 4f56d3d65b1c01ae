"""The control plane at the command line: `intake admin` (the process), and the `key`, `team`, `persona` and
`audit` groups. Commands act as the schema owner, bound to the tenant they act on, and every change writes
an audit row naming the OS user (`cli:<user>`). They share the domain functions of the admin API, so a value
the API answers 422 is refused here too, in one line naming the field."""

from __future__ import annotations

import getpass
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from sqlalchemy import Connection

from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.control import keys, personas, teams
from pipelines.control.common import owner_of
from pipelines.control.errors import Invalid
from pipelines.control.fields import field_errors
from pipelines.control.models import KeyCreate, Listing, Page, PersonaCreate, PersonaUpdate, TeamCreate, TeamUpdate
from workers.cli.common import When, admin_engine, emit, friendly_errors, out

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


def actor() -> audit.Actor:
    """The person at the command line: their commands hold the database owner's rights, an operator's."""
    return audit.Actor(f"cli:{getpass.getuser()}", operator=True)


def build(model: type[M], data: dict[str, Any]) -> M:
    """A request model from options; an invalid value is refused with its field named."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(field_errors(exc)) from None


@contextmanager
def owner_transaction(kind: str | None = None, object_id: uuid.UUID | None = None) -> Iterator[Connection]:
    """A transaction as the schema owner, bound to the tenant `object_id` (of `kind`) belongs to."""
    engine = admin_engine()
    try:
        with engine.begin() as conn:
            if kind is not None and object_id is not None:
                tenant = owner_of(conn, kind, object_id)
                if tenant is not None:
                    bind_tenant(conn, TenantId(tenant))
            yield conn
    finally:
        engine.dispose()


def show(model: BaseModel, as_json: bool, fields: tuple[str, ...] = ()) -> None:
    data = model.model_dump(mode="json")
    if as_json:
        emit(data)
        return
    for key in fields or tuple(data):
        value = data[key]
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        out.print(f"[bold]{escape(key)}[/]: {escape(str(shown))}", highlight=False)


def show_list(listing: Listing[Any], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        emit(listing.model_dump(mode="json"))
        return
    for item in listing.items:
        data = item.model_dump(mode="json")
        out.print("  ".join(str(data[c]) for c in columns), highlight=False, markup=False)
    if listing.next_offset is not None:
        out.print(f"[dim]more: --offset {listing.next_offset}[/]")


def page_options(func: Callable[P, R]) -> Callable[P, R]:
    func = click.option("--offset", type=click.IntRange(0), default=0, show_default=True)(func)
    return click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)(func)


JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


# -- the admin process ------------------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=int)
@friendly_errors
def admin(host: str, port: int) -> None:
    """Run the admin API (the Procfile's admin process); never expose it on the internet-facing side."""
    import uvicorn

    from workers.admin.app import create_app
    from workers.cli.common import maintenance_runtime
    from workers.startup import check_unprivileged

    rt = maintenance_runtime("intake admin")
    check_unprivileged(rt.database_url)
    app = create_app(rt.resolved(), database_url=rt.database_url, admin_database_url=rt.admin_database_url,
                     secret_key=rt.require_secret_key())
    # An open change stream never ends by itself: a shutdown gives them a few seconds, then closes them (their
    # clients resume elsewhere with Last-Event-ID).
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, lifespan="on", server_header=False,
                proxy_headers=False, timeout_graceful_shutdown=5)


# -- keys ---------------------------------------------------------------------------------------------------
@click.group()
def key() -> None:
    """API keys for the admin API: an operator key acts on every tenant, a tenant key on its own."""


@key.command("create")
@click.option("--name", required=True, help="Who or what uses the key.")
@click.option("--operator", is_flag=True, help="A key that acts on every tenant.")
@click.option("--tenant", "tenant_id", type=click.UUID, help="A key that acts on this tenant only.")
@JSON
@friendly_errors
def key_create(name: str, operator: bool, tenant_id: uuid.UUID | None, as_json: bool) -> None:
    """Create a key and print it (once: only its hash is kept)."""
    if operator == (tenant_id is not None):
        raise click.UsageError("give exactly one of --operator and --tenant ID")
    with owner_transaction("tenant", tenant_id) as conn:
        request = build(KeyCreate, {"name": name, "tenant_id": tenant_id})
        view, secret = keys.create(conn, name=request.name, tenant_id=request.tenant_id, actor=actor())
    if as_json:
        emit({**view.model_dump(mode="json"), "key": secret})
        return
    out.print(f"created {view.scope} key [bold]{view.id}[/] ({escape(view.name)})")
    out.print(f"key: {secret}", highlight=False)
    out.print("[yellow]the key is shown once; only its hash is stored[/]")


@key.command("list")
@click.option("--tenant", "tenant_id", type=click.UUID, help="Only this tenant's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked keys too.")
@page_options
@JSON
@friendly_errors
def key_list(tenant_id: uuid.UUID | None, include_revoked: bool, limit: int, offset: int, as_json: bool) -> None:
    """API keys (never the keys themselves: their prefixes)."""
    with owner_transaction() as conn:
        listing = keys.list_keys(conn, Page(limit=limit, offset=offset), tenant=tenant_id,
                                 include_revoked=include_revoked)
    show_list(listing, as_json, ("id", "prefix", "scope", "tenant_id", "name", "last_used_at", "revoked_at"))


@key.command("revoke")
@click.argument("key_id", type=click.UUID)
@JSON
@friendly_errors
def key_revoke(key_id: uuid.UUID, as_json: bool) -> None:
    """Revoke a key: it gets 401 from then on."""
    with owner_transaction() as conn:
        view = keys.get(conn, key_id)
        if view.tenant_id is not None:
            bind_tenant(conn, TenantId(view.tenant_id))
        view = keys.revoke(conn, key_id, actor())
    show(view, as_json, ("id", "name", "revoked_at"))


# -- teams and personas ----------------------------------------------------------------------------------
@click.group()
def team() -> None:
    """Teams a message can be suggested to."""


@team.command("create")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True)
@click.argument("name")
@click.option("--description", default="")
@click.option("--keyword", "keywords", multiple=True, help="A word that routes to this team (repeatable).")
@JSON
@friendly_errors
def team_create(tenant_id: uuid.UUID, name: str, description: str, keywords: tuple[str, ...], as_json: bool) -> None:
    """Create a team."""
    request = build(TeamCreate, {"name": name, "description": description, "keywords": list(keywords)})
    with owner_transaction("tenant", tenant_id) as conn:
        show(teams.create(conn, TenantId(tenant_id), request, actor()), as_json)


@team.command("list")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True)
@page_options
@JSON
@friendly_errors
def team_list(tenant_id: uuid.UUID, limit: int, offset: int, as_json: bool) -> None:
    """A tenant's teams."""
    with owner_transaction("tenant", tenant_id) as conn:
        show_list(teams.list_teams(conn, tenant_id, Page(limit=limit, offset=offset)), as_json,
                  ("id", "name", "keywords"))


@team.command("update")
@click.argument("team_id", type=click.UUID)
@click.option("--name")
@click.option("--description")
@click.option("--keyword", "keywords", multiple=True, help="Replaces the keywords (repeatable).")
@JSON
@friendly_errors
def team_update(team_id: uuid.UUID, name: str | None, description: str | None, keywords: tuple[str, ...],
                as_json: bool) -> None:
    """Rename a team or change its description or keywords."""
    given = {"name": name, "description": description, "keywords": list(keywords) if keywords else None}
    request = build(TeamUpdate, {k: v for k, v in given.items() if v is not None})
    with owner_transaction("team", team_id) as conn:
        show(teams.change(conn, team_id, request, actor()), as_json)


@team.command("delete")
@click.argument("team_id", type=click.UUID)
@JSON
@friendly_errors
def team_delete(team_id: uuid.UUID, as_json: bool) -> None:
    """Delete a team."""
    with owner_transaction("team", team_id) as conn:
        show(teams.remove(conn, team_id, actor()), as_json)


def persona_options(func: Callable[P, R]) -> Callable[P, R]:
    for option in reversed([
        click.option("--tone"), click.option("--system-prompt"),
        click.option("--language", help="ISO 639-1; drafts answer in the customer's language without it."),
        click.option("--model", help="The AI model for this persona's drafts."),
        click.option("--temperature", type=float),
        click.option("--max-tokens", type=int, help="The longest draft, in tokens (1-32768)."),
        click.option("--active/--inactive", "active", default=None,
                     help="An inactive persona drafts nothing: its inboxes use the tenant's default."),
        click.option("--default/--no-default", "is_default", default=None, help="The tenant's default persona."),
    ]):
        func = option(func)
    return func


@click.group()
def persona() -> None:
    """AI personas: the voice of drafted replies (one default per tenant; an inbox may choose its own)."""


@persona.command("create")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True)
@click.argument("name")
@persona_options
@JSON
@friendly_errors
def persona_create(tenant_id: uuid.UUID, name: str, as_json: bool, **given: Any) -> None:
    """Create a persona."""
    request = build(PersonaCreate, {"name": name, **{k: v for k, v in given.items() if v is not None}})
    with owner_transaction("tenant", tenant_id) as conn:
        show(personas.create(conn, TenantId(tenant_id), request, actor()), as_json)


@persona.command("list")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True)
@page_options
@JSON
@friendly_errors
def persona_list(tenant_id: uuid.UUID, limit: int, offset: int, as_json: bool) -> None:
    """A tenant's personas."""
    with owner_transaction("tenant", tenant_id) as conn:
        show_list(personas.list_personas(conn, tenant_id, Page(limit=limit, offset=offset)), as_json,
                  ("id", "name", "language", "model", "active", "is_default"))


@persona.command("update")
@click.argument("persona_id", type=click.UUID)
@click.option("--name")
@persona_options
@JSON
@friendly_errors
def persona_update(persona_id: uuid.UUID, as_json: bool, **given: Any) -> None:
    """Change a persona."""
    request = build(PersonaUpdate, {k: v for k, v in given.items() if v is not None})
    with owner_transaction("persona", persona_id) as conn:
        show(personas.change(conn, persona_id, request, actor()), as_json)


@persona.command("delete")
@click.argument("persona_id", type=click.UUID)
@JSON
@friendly_errors
def persona_delete(persona_id: uuid.UUID, as_json: bool) -> None:
    """Delete a persona; inboxes that chose it use the default."""
    with owner_transaction("persona", persona_id) as conn:
        show(personas.remove(conn, persona_id, actor()), as_json)


# -- the audit trail ---------------------------------------------------------------------------------------
@click.group("audit")
def audit_group() -> None:
    """The audit trail: every change made through the admin API or these commands."""


@audit_group.command("list")
@click.option("--tenant", "tenant_id", type=click.UUID)
@click.option("--action", help="An action (inbox.disable) or a family (inbox).")
@click.option("--since", type=When(), help="ISO time or age: 2h, 7d.")
@page_options
@JSON
@friendly_errors
def audit_list(tenant_id: uuid.UUID | None, action: str | None, since: Any, limit: int, offset: int,
               as_json: bool) -> None:
    """Audit rows, newest first."""
    filters = audit.AuditFilters(tenant=tenant_id, action=action, since=since)
    with owner_transaction() as conn:
        rows = audit.list_entries(conn, filters, limit=limit + 1, offset=offset)
    more = len(rows) > limit
    data = {"items": rows[:limit], "next_offset": offset + limit if more else None}
    if as_json:
        emit(data)
        return
    for row in rows[:limit]:
        out.print(f"{row['created_at']:%Y-%m-%d %H:%M:%S}  {row['actor']}  {row['action']}  "
                  f"{row['subject_type']}:{row['subject_id']}  tenant={row['tenant_id'] or '-'}", highlight=False,
                  markup=False)
    if more:
        out.print(f"[dim]more: --offset {offset + limit}[/]")


COMMANDS = (admin, key, team, persona, audit_group)
