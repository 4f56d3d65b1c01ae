"""Tenants and their inboxes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import orjson
from rich.markup import escape

from db.tenancy import TenantId, resolve_tenant
from pipelines.control import tenants as tenant_ops
from pipelines.control.fields import clean_text
from pipelines.control.inboxes import Inboxes
from pipelines.control.models import InboxCreate, InboxUpdate, Page, RotateSecrets, TenantCreate, TenantUpdate
from pipelines.crypto import SecretBox
from pipelines.inboxes import CHANNELS
from workers.cli.common import app_transaction, emit, friendly_errors, out, runtime
from workers.cli.control import JSON, actor, build, owner_transaction, page_options, show, show_list


@click.group()
def tenant() -> None:
    """Tenants: the companies whose messages the fleet ingests."""


@tenant.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def tenant_create(name: str, as_json: bool) -> None:
    """Create a tenant and print its id."""
    request = build(TenantCreate, {"name": name})  # text the database can store (no bytes undecodable as UTF-8)
    with app_transaction(runtime()) as conn:  # the API's own function: one audit row, whichever the door
        view = tenant_ops.create(conn, request, actor())
    if as_json:
        emit(view.model_dump(mode="json"))
    else:
        out.print(f"created tenant [bold]{escape(view.name)}[/] with id [bold]{view.id}[/]")


def _parse_secrets(pairs: tuple[str, ...]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--secret")
        try:
            result[clean_text(key.strip())] = clean_text(value)
        except ValueError as exc:
            raise click.BadParameter(f"{key[:40]!r}: {exc}", param_hint="--secret") from None
    return result


@click.group()
def inbox() -> None:
    """Inboxes: one webhook endpoint of one channel for one tenant."""


@inbox.command("create")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--channel", required=True, help=f"One of: {', '.join(CHANNELS)}.")
@click.option("--name", default=None, help="A name for people.")
@click.option("--secret", "secrets_", multiple=True, metavar="KEY=VALUE", help="A channel secret (repeatable).")
@click.option("--region", default=None, help="Default region for national phone numbers (e.g. US, FI).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def inbox_create(
    tenant_id: str, channel: str, name: str | None, secrets_: tuple[str, ...], region: str | None, as_json: bool
) -> None:
    """Create an inbox; its secrets are printed once, then kept encrypted."""
    # The name and region as the admin API takes them: a region is two letters, a name storable text.
    request = build(InboxCreate, {"channel": channel, "name": name, "secrets": _parse_secrets(secrets_),
                                  "settings": {"default_region": region} if region else None})
    inboxes = inbox_tools()
    with app_transaction(runtime()) as conn:  # the API's own function: one audit row, whichever the door
        tenant = resolve_tenant(conn, tenant_id)
        created = inboxes.create(conn, tenant, request, actor())
    view = created.inbox
    data = {
        "id": str(view.id), "tenant_id": str(view.tenant_id), "channel": view.channel, "name": view.name,
        "webhook_url": created.webhook_url, "secrets": created.secrets,
    }
    if as_json:
        emit(data)
        return
    out.print(f"created {channel} inbox [bold]{view.id}[/] for tenant {view.tenant_id}")
    out.print(f"webhook URL: {data['webhook_url']}", markup=False)
    for key, value in created.secrets.items():
        out.print(f"  {key} = {value}", markup=False)
    out.print("[yellow]the secrets are shown once; they are stored encrypted[/]")




# -- the lifecycle after creation ---------------------------------------------------------------------------
def settings_changes(pairs: tuple[str, ...], unset: tuple[str, ...]) -> dict[str, Any] | None:
    """`--set ai.monthly_budget_usd=50 --unset taxonomy` as a settings patch; values are JSON when they
    parse as JSON (50, true, ["a"]), else text. A dotted key sets a field inside a top-level setting."""
    if not pairs and not unset:
        return None
    patch: dict[str, Any] = {name: None for name in unset}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        target = patch
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key!r} sets inside a value that is not an object", param_hint="--set")
        target[leaf] = value
    return patch


SETTINGS_OPTIONS = (
    click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE",
                 help="Set a setting (repeatable; dotted keys set inside: ai.model=gpt-4o)."),
    click.option("--unset", multiple=True, metavar="KEY", help="Remove a top-level setting (repeatable)."),
)


def settings_options(func: Any) -> Any:
    for option in reversed(SETTINGS_OPTIONS):
        func = option(func)
    return func


def inbox_tools() -> Inboxes:
    rt = runtime()
    return Inboxes(SecretBox(rt.require_secret_key()), rt.settings.public_base_url or "http://127.0.0.1:8000")


@tenant.command("list")
@page_options
@JSON
@friendly_errors
def tenant_list(limit: int, offset: int, as_json: bool) -> None:
    """Every tenant, oldest first."""
    with owner_transaction() as conn:
        show_list(tenant_ops.list_tenants(conn, Page(limit=limit, offset=offset)), as_json,
                  ("id", "name", "disabled", "created_at"))


@tenant.command("show")
@click.argument("tenant_id", type=click.UUID)
@JSON
@friendly_errors
def tenant_show(tenant_id: uuid.UUID, as_json: bool) -> None:
    """One tenant with its settings."""
    with owner_transaction("tenant", tenant_id) as conn:
        show(tenant_ops.get(conn, tenant_id), as_json)


@tenant.command("update")
@click.argument("tenant_id", type=click.UUID)
@click.option("--name")
@settings_options
@JSON
@friendly_errors
def tenant_update(tenant_id: uuid.UUID, name: str | None, pairs: tuple[str, ...], unset: tuple[str, ...],
                  as_json: bool) -> None:
    """Rename a tenant or change its settings (validated: a wrong value is refused with its field named)."""
    given: dict[str, Any] = {"name": name, "settings": settings_changes(pairs, unset)}
    request = build(TenantUpdate, {k: v for k, v in given.items() if v is not None})
    with owner_transaction("tenant", tenant_id) as conn:
        show(tenant_ops.change(conn, TenantId(tenant_id), request, actor()), as_json)


def _tenant_state(tenant_id: uuid.UUID, disabled: bool, as_json: bool) -> None:
    with owner_transaction("tenant", tenant_id) as conn:
        show(tenant_ops.set_disabled(conn, TenantId(tenant_id), disabled, actor()), as_json,
             ("id", "name", "disabled", "disabled_at"))


@tenant.command("disable")
@click.argument("tenant_id", type=click.UUID)
@JSON
@friendly_errors
def tenant_disable(tenant_id: uuid.UUID, as_json: bool) -> None:
    """Disable a tenant: its inboxes answer 404; nothing is deleted."""
    _tenant_state(tenant_id, True, as_json)


@tenant.command("enable")
@click.argument("tenant_id", type=click.UUID)
@JSON
@friendly_errors
def tenant_enable(tenant_id: uuid.UUID, as_json: bool) -> None:
    """Enable a disabled tenant."""
    _tenant_state(tenant_id, False, as_json)


INBOX_COLUMNS = ("id", "tenant_id", "channel", "name", "enabled")


@inbox.command("list")
@click.option("--tenant", "tenant_id", type=click.UUID, help="Only this tenant's inboxes.")
@page_options
@JSON
@friendly_errors
def inbox_list(tenant_id: uuid.UUID | None, limit: int, offset: int, as_json: bool) -> None:
    """Inboxes, oldest first (secrets masked)."""
    tools = inbox_tools()
    with owner_transaction("tenant", tenant_id) as conn:
        show_list(tools.list_inboxes(conn, Page(limit=limit, offset=offset), tenant_id), as_json, INBOX_COLUMNS)


@inbox.command("show")
@click.argument("inbox_id", type=click.UUID)
@JSON
@friendly_errors
def inbox_show(inbox_id: uuid.UUID, as_json: bool) -> None:
    """One inbox: its webhook URL, settings and masked secrets."""
    tools = inbox_tools()
    with owner_transaction("inbox", inbox_id) as conn:
        show(tools.get(conn, inbox_id), as_json)


@inbox.command("update")
@click.argument("inbox_id", type=click.UUID)
@click.option("--name")
@click.option("--persona", "persona_id", help="The persona drafting this inbox's replies (`none`: the default).")
@settings_options
@JSON
@friendly_errors
def inbox_update(inbox_id: uuid.UUID, name: str | None, persona_id: str | None, pairs: tuple[str, ...],
                 unset: tuple[str, ...], as_json: bool) -> None:
    """Rename an inbox, change its settings or choose its persona."""
    given: dict[str, Any] = {"name": name, "settings": settings_changes(pairs, unset)}
    data = {k: v for k, v in given.items() if v is not None}
    if persona_id is not None:
        data["persona_id"] = None if persona_id.lower() == "none" else persona_id
    request = build(InboxUpdate, data)
    tools = inbox_tools()
    with owner_transaction("inbox", inbox_id) as conn:
        show(tools.change(conn, inbox_id, request, actor()), as_json)


def _inbox_state(inbox_id: uuid.UUID, enabled: bool, as_json: bool) -> None:
    tools = inbox_tools()
    with owner_transaction("inbox", inbox_id) as conn:
        show(tools.set_enabled(conn, inbox_id, enabled, actor()), as_json, INBOX_COLUMNS)


@inbox.command("disable")
@click.argument("inbox_id", type=click.UUID)
@JSON
@friendly_errors
def inbox_disable(inbox_id: uuid.UUID, as_json: bool) -> None:
    """Disable an inbox: its deliveries get 404 until it is enabled."""
    _inbox_state(inbox_id, False, as_json)


@inbox.command("enable")
@click.argument("inbox_id", type=click.UUID)
@JSON
@friendly_errors
def inbox_enable(inbox_id: uuid.UUID, as_json: bool) -> None:
    """Enable an inbox."""
    _inbox_state(inbox_id, True, as_json)


@inbox.command("rotate-secrets")
@click.argument("inbox_id", type=click.UUID)
@click.option("--overlap", default="24h", show_default=True,
              help="How long the old secrets keep verifying: 0, 30m, 24h, 7d.")
@click.option("--secret", "secrets_", multiple=True, metavar="KEY=VALUE",
              help="A new provider-issued secret (repeatable); the others are generated anew unless given.")
@JSON
@friendly_errors
def inbox_rotate(inbox_id: uuid.UUID, overlap: str, secrets_: tuple[str, ...], as_json: bool) -> None:
    """New secrets for an inbox, printed once; the old ones verify too until the overlap ends."""
    request = build(RotateSecrets, {"overlap_seconds": _seconds(overlap), "secrets": _parse_secrets(secrets_)})
    tools = inbox_tools()
    with owner_transaction("inbox", inbox_id) as conn:
        rotated = tools.rotate(conn, inbox_id, request, actor(), datetime.now(UTC))
    if as_json:
        emit(rotated.model_dump(mode="json"))
        return
    out.print(f"new secrets for inbox [bold]{inbox_id}[/]; the old ones verify until "
              f"{rotated.inbox.previous_secrets_until or 'now (no overlap)'}")
    out.print(f"webhook URL: {rotated.webhook_url}", markup=False)
    for name, value in rotated.secrets.items():
        out.print(f"  {name} = {value}", markup=False)


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return int(timedelta(seconds=int(text[:-1]) * units[text[-1]]).total_seconds())
        return int(text)
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{text[:40]!r} is not a duration like 0, 30m, 24h or 7d",
                                 param_hint="--overlap") from None
