"""`intake webhook ...`: a tenant's webhook endpoints at the command line, through the functions the admin API
calls (`pipelines.webhooks.endpoints`), so a value the API answers 422 is refused here too, naming the field,
and every change writes the same audit row (actor `cli:<user>`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import click

from db.tenancy import TenantId
from pipelines.control.models import Page
from pipelines.crypto import SecretBox
from pipelines.webhooks.endpoints import Endpoints
from pipelines.webhooks.models import (
    AttemptQuery,
    EndpointCreate,
    EndpointSecret,
    EndpointUpdate,
    Recover,
    RotateEndpointSecret,
)
from workers.cli.common import When, emit, friendly_errors, out, runtime
from workers.cli.control import JSON, actor, build, owner_transaction, page_options, show, show_list
from workers.cli.tenants import _seconds

KIND = "webhook_endpoint"
COLUMNS = ("id", "url", "enabled", "failing_since", "disabled_reason")


def tools() -> Endpoints:
    rt = runtime()
    return Endpoints(SecretBox(rt.require_secret_key()), allow_private=rt.settings.webhook_allow_private_networks)


def _shown_once(shown: EndpointSecret, as_json: bool, what: str) -> None:
    if as_json:
        emit(shown.model_dump(mode="json"))
        return
    out.print(f"{what} webhook endpoint [bold]{shown.endpoint.id}[/] -> {shown.endpoint.url}", markup=False)
    out.print(f"secret: {shown.secret}", highlight=False, markup=False)
    out.print("[yellow]the secret is shown once; receivers verify deliveries with it[/]")


def _fields(url: str | None, event_types: tuple[str, ...], description: str | None, rate: int | None
            ) -> dict[str, Any]:
    given = {"url": url, "event_types": list(event_types) if event_types else None, "description": description,
             "rate_limit_per_second": rate}
    return {k: v for k, v in given.items() if v is not None}


EVENT_TYPES = click.option("--event-type", "event_types", multiple=True,
                           help="A type to deliver (repeatable): message.received, ...; none: every type.")


@click.group()
def webhook() -> None:
    """Webhook endpoints: the change feed POSTed, signed, to the applications downstream."""


@webhook.command("create")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True)
@click.argument("url")
@EVENT_TYPES
@click.option("--description")
@click.option("--rate-limit", "rate", type=int, help="At most this many deliveries a second.")
@JSON
@friendly_errors
def webhook_create(tenant_id: uuid.UUID, url: str, event_types: tuple[str, ...], description: str | None,
                   rate: int | None, as_json: bool) -> None:
    """Create an endpoint; its whsec_ secret is printed once."""
    request = build(EndpointCreate, _fields(url, event_types, description, rate))
    endpoints = tools()
    with owner_transaction("tenant", tenant_id) as conn:
        created = endpoints.create(conn, TenantId(tenant_id), request, actor())
    _shown_once(created, as_json, "created")


@webhook.command("list")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True)
@page_options
@JSON
@friendly_errors
def webhook_list(tenant_id: uuid.UUID, limit: int, offset: int, as_json: bool) -> None:
    """A tenant's endpoints (never their secrets)."""
    endpoints = tools()
    with owner_transaction("tenant", tenant_id) as conn:
        show_list(endpoints.list_endpoints(conn, tenant_id, Page(limit=limit, offset=offset)), as_json, COLUMNS)


@webhook.command("show")
@click.argument("endpoint_id", type=click.UUID)
@JSON
@friendly_errors
def webhook_show(endpoint_id: uuid.UUID, as_json: bool) -> None:
    """One endpoint: its URL, types, state and since when it fails."""
    endpoints = tools()
    with owner_transaction(KIND, endpoint_id) as conn:
        show(endpoints.get(conn, endpoint_id), as_json)


@webhook.command("update")
@click.argument("endpoint_id", type=click.UUID)
@click.option("--url")
@EVENT_TYPES
@click.option("--all-types", is_flag=True, help="Deliver every type again.")
@click.option("--description")
@click.option("--rate-limit", "rate", type=int)
@click.option("--no-rate-limit", is_flag=True, help="Remove the rate limit.")
@click.option("--enable/--disable", "enabled", default=None, help="Resume or stop deliveries.")
@JSON
@friendly_errors
def webhook_update(endpoint_id: uuid.UUID, url: str | None, event_types: tuple[str, ...], all_types: bool,
                   description: str | None, rate: int | None, no_rate_limit: bool, enabled: bool | None,
                   as_json: bool) -> None:
    """Change an endpoint; --enable resumes deliveries from where they stopped."""
    data = _fields(url, event_types, description, rate)
    if all_types:
        data["event_types"] = []
    if no_rate_limit:
        data["rate_limit_per_second"] = None
    if enabled is not None:
        data["enabled"] = enabled
    request = build(EndpointUpdate, data)
    endpoints = tools()
    with owner_transaction(KIND, endpoint_id) as conn:
        show(endpoints.change(conn, endpoint_id, request, actor(), datetime.now(UTC)), as_json)


@webhook.command("delete")
@click.argument("endpoint_id", type=click.UUID)
@JSON
@friendly_errors
def webhook_delete(endpoint_id: uuid.UUID, as_json: bool) -> None:
    """Delete an endpoint and its deliveries."""
    endpoints = tools()
    with owner_transaction(KIND, endpoint_id) as conn:
        show(endpoints.remove(conn, endpoint_id, actor()), as_json)


@webhook.command("rotate-secret")
@click.argument("endpoint_id", type=click.UUID)
@click.option("--overlap", default="24h", show_default=True,
              help="How long deliveries carry the old secret's signature too: 0, 30m, 24h, 7d.")
@JSON
@friendly_errors
def webhook_rotate(endpoint_id: uuid.UUID, overlap: str, as_json: bool) -> None:
    """A new secret, printed once; during the overlap deliveries carry both signatures."""
    request = build(RotateEndpointSecret, {"overlap_seconds": _seconds(overlap)})
    endpoints = tools()
    with owner_transaction(KIND, endpoint_id) as conn:
        rotated = endpoints.rotate(conn, endpoint_id, request, actor(), datetime.now(UTC))
    _shown_once(rotated, as_json, "rotated the secret of")


@webhook.command("recover")
@click.argument("endpoint_id", type=click.UUID)
@click.option("--since", type=When(), required=True, help="ISO time or age: 2h, 7d.")
@JSON
@friendly_errors
def webhook_recover(endpoint_id: uuid.UUID, since: datetime, as_json: bool) -> None:
    """Deliver again every event of the endpoint's types recorded since a time."""
    request = build(Recover, {"since": since})
    endpoints = tools()
    with owner_transaction(KIND, endpoint_id) as conn:
        show(endpoints.recover(conn, endpoint_id, request, actor()), as_json)


@webhook.command("attempts")
@click.argument("endpoint_id", type=click.UUID)
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]))
@page_options
@JSON
@friendly_errors
def webhook_attempts(endpoint_id: uuid.UUID, status: str | None, limit: int, offset: int, as_json: bool) -> None:
    """The endpoint's deliveries, newest event first: status, tries, the last answer."""
    query = build(AttemptQuery, {"status": status, "limit": limit, "offset": offset})
    endpoints = tools()
    with owner_transaction(KIND, endpoint_id) as conn:
        show_list(endpoints.attempts(conn, endpoint_id, query), as_json,
                  ("event_seq", "event_type", "status", "attempts", "last_status_code", "next_attempt_at"))


COMMANDS = (webhook,)
