"""Tenants and their inboxes."""

from __future__ import annotations

import click

from db.tenancy import resolve_tenant
from pipelines.crypto import SecretBox
from pipelines.inboxes import CHANNELS, create_inbox, create_tenant, webhook_url
from workers.cli.common import app_transaction, emit, friendly_errors, out, runtime


@click.group()
def tenant() -> None:
    """Tenants: the companies whose messages the fleet ingests."""


@tenant.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def tenant_create(name: str, as_json: bool) -> None:
    """Create a tenant and print its id."""
    rt = runtime()
    with app_transaction(rt) as conn:
        tenant_id = create_tenant(conn, name)
    if as_json:
        emit({"id": str(tenant_id), "name": name.strip()})
    else:
        out.print(f"created tenant [bold]{name.strip()}[/] with id [bold]{tenant_id}[/]")


def _parse_secrets(pairs: tuple[str, ...]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--secret")
        result[key.strip()] = value
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
    given = _parse_secrets(secrets_)
    rt = runtime()
    box = SecretBox(rt.require_secret_key())
    settings = {"default_region": region.upper()} if region else {}
    with app_transaction(rt) as conn:
        tenant = resolve_tenant(conn, tenant_id)
        created = create_inbox(conn, box, tenant, channel, name=name, given_secrets=given, settings=settings)
    base = rt.settings.public_base_url or "http://127.0.0.1:8000"
    data = {
        "id": str(created.id), "tenant_id": str(created.tenant_id), "channel": created.channel,
        "name": created.name, "webhook_url": webhook_url(base, channel, created.id, created.secrets),
        "secrets": created.secrets,
    }
    if as_json:
        emit(data)
        return
    out.print(f"created {channel} inbox [bold]{created.id}[/] for tenant {created.tenant_id}")
    out.print(f"webhook URL: {data['webhook_url']}")
    for key, value in created.secrets.items():
        out.print(f"  {key} = {value}")
    out.print("[yellow]the secrets are shown once; they are stored encrypted[/]")


