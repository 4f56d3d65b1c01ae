"""Tenants and inboxes in the console: list and search, create, disable and enable, edit settings (the
API's validation messages shown next to each field), rotate secrets (the new ones shown once), and each
inbox's webhook URL and last deliveries. A tenant's page lists its latest conversations, each linking to its
thread (read-only, `console.conversations`).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy import select
from starlette.responses import Response
from starlette.routing import Route

from db.schema import inbound_events, tenants
from pipelines.control.common import paged
from pipelines.control.errors import Forbidden, Invalid
from pipelines.control.models import (
    CHANNEL_NAMES,
    InboxCreate,
    InboxUpdate,
    Page,
    RotateSecrets,
    TenantCreate,
    TenantUpdate,
    TenantView,
)
from pipelines.desk.models import ConversationQuery
from workers.admin import conversations as conversation_api
from workers.admin import tenants as api
from workers.admin import webhooks
from workers.admin.console.web import Console, Visit, checked, nested, offset_of, page, parse_uuid, redirect

PAGE_SIZE = 50
CONVERSATIONS_SHOWN = 20  # the latest, each linking to its thread
NOTICES = {"saved": "Saved.", "disabled": "Disabled.", "enabled": "Enabled.", "created": "Created."}
# The settings the forms show. A form sends what it shows (an empty field removes the setting); a field it
# does not send is left as it is. A tenant key's form shows the operator's settings read-only (disabled
# fields, never sent), so saving it keeps them; a form forged to send one is refused like the API's request.
TENANT_FIELDS = ("settings.default_region", "settings.default_language", "settings.reopen_window_hours",
                 "settings.ai.provider", "settings.ai.model", "settings.ai.monthly_budget_usd")
INBOX_FIELDS = ("settings.default_region", "settings.reopen_window_hours", "settings.rate_limit_per_second",
                "settings.rate_limit_burst", "settings.ai_drafts")
# Settings the models take as numbers only (strict: "5" is not 5 in a JSON body); a form sends text.
NUMBER_FIELDS = ("settings.reopen_window_hours", "settings.ai.monthly_budget_usd", "settings.rate_limit_per_second")
ISSUED_SECRETS = ("auth_token", "app_secret", "signing_key")  # the ones a provider issues (Twilio, Meta, Mailgun)


def _tenant_view(row: Any) -> TenantView:
    return TenantView(id=row.id, name=row.name, settings=row.settings or {}, disabled=row.disabled_at is not None,
                      disabled_at=row.disabled_at, created_at=row.created_at)


def flatten(document: dict[str, Any], prefix: str = "settings") -> dict[str, str]:
    """Stored settings as the form's dotted field names."""
    out: dict[str, str] = {}
    for key, value in document.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif value is not None:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def numbers(values: dict[str, str]) -> dict[str, Any]:
    """The form's values with the numeric settings as numbers where they are plain decimals; anything else
    (a word, "²", "1e400") goes to the model as typed, whose message then names the field."""
    typed: dict[str, Any] = dict(values)
    for name in NUMBER_FIELDS:
        value = values.get(name, "")
        if value.isascii() and value.replace(".", "", 1).isdigit() and len(value) <= 20:
            typed[name] = float(value)
    return typed


def list_page(visit: Visit) -> Response:
    search = visit.value("q")[:200]
    if "\x00" in search:  # PostgreSQL stores no NUL, so no name has one
        raise Invalid({"q": "must not contain NUL characters"})
    offset = offset_of(visit.value("offset"))
    query = select(tenants).order_by(tenants.c.created_at, tenants.c.id)
    if search:
        try:
            query = query.where(tenants.c.id == uuid.UUID(search))
        except ValueError:
            query = query.where(tenants.c.name.icontains(search, autoescape=True))
    with visit.call().transaction() as conn:
        listing = paged(conn, query, Page(limit=PAGE_SIZE, offset=min(offset, 1_000_000)), _tenant_view)
    return visit.render("tenants.html", title="Tenants", listing=listing, search=search, offset=offset,
                        page_size=PAGE_SIZE, errors={}, values={})


def create_tenant(visit: Visit) -> Response:
    if not visit.principal.operator:
        raise Forbidden("creating a tenant needs an operator key")
    try:
        body = checked(TenantCreate, {"name": visit.value("name")})
    except Invalid as exc:
        with visit.call().transaction() as conn:
            listing = paged(conn, select(tenants).order_by(tenants.c.created_at, tenants.c.id),
                            Page(limit=PAGE_SIZE), _tenant_view)
        return visit.render("tenants.html", 422, title="Tenants", listing=listing, search="", offset=0,
                            page_size=PAGE_SIZE, errors=exc.fields, values={"name": visit.value("name")})
    created = api.create_tenant(visit.call(body=body))
    return redirect(f"/tenants/{created.id}", notice="created")


def _tenant_id(visit: Visit) -> uuid.UUID:
    return parse_uuid(visit.request.path_params["tenant_id"], "tenant")


def tenant_page(visit: Visit, code: int = 200, errors: dict[str, str] | None = None,
                values: dict[str, str] | None = None, inbox_errors: dict[str, str] | None = None) -> Response:
    tenant_id = _tenant_id(visit)
    call = visit.call(ids={"tenant_id": tenant_id}, owner=("tenant", tenant_id))
    tenant = api.show_tenant(call)
    call.query = Page(limit=100)
    inboxes = api.list_tenant_inboxes(call)
    endpoints = webhooks.list_endpoints(call)
    call.query = ConversationQuery(limit=CONVERSATIONS_SHOWN)
    conversations = conversation_api.list_conversations(call)
    return visit.render("tenant.html", code, title=tenant.name, tenant=tenant, inboxes=inboxes, endpoints=endpoints,
                        conversations=conversations,
                        errors=errors or {}, inbox_errors=inbox_errors or {}, values=values if values is not None else
                        {"name": tenant.name, **flatten(tenant.settings)},
                        notice=NOTICES.get(visit.request.query_params.get("notice", ""), ""),
                        channels=CHANNEL_NAMES, issued=ISSUED_SECRETS)


def update_tenant(visit: Visit) -> Response:
    tenant_id = _tenant_id(visit)
    values = {name: visit.value(name) for name in ("name", *TENANT_FIELDS) if name in visit.form}
    try:
        settings = nested(numbers(values), "settings")
        body = checked(TenantUpdate, {"name": values.get("name") or None, "settings": settings})
        api.update_tenant(visit.call(body=body, ids={"tenant_id": tenant_id}, owner=("tenant", tenant_id)))
    except Invalid as exc:
        return tenant_page(visit, 422, exc.fields, values)
    return redirect(f"/tenants/{tenant_id}", notice="saved")


def set_tenant_state(visit: Visit) -> Response:
    tenant_id = _tenant_id(visit)
    disable = visit.request.url.path.endswith("/disable")
    call = visit.call(ids={"tenant_id": tenant_id}, owner=("tenant", tenant_id))
    if not visit.principal.operator:
        raise Forbidden("disabling or enabling a tenant needs an operator key")
    (api.disable_tenant if disable else api.enable_tenant)(call)
    return redirect(f"/tenants/{tenant_id}", notice="disabled" if disable else "enabled")


def create_inbox(visit: Visit) -> Response:
    tenant_id = _tenant_id(visit)
    given = {name: visit.value(f"secrets.{name}") for name in ISSUED_SECRETS if visit.value(f"secrets.{name}")}
    try:
        body = checked(InboxCreate, {"channel": visit.value("channel"), "name": visit.value("name") or None,
                                     "secrets": given})
        created = api.create_inbox(visit.call(body=body, ids={"tenant_id": tenant_id}, owner=("tenant", tenant_id)))
    except Invalid as exc:
        return tenant_page(visit, 422, inbox_errors=exc.fields)
    return visit.render("secrets.html", title="New inbox", inbox=created.inbox, secrets=created.secrets,
                        webhook_url=created.webhook_url, created=True)


def _inbox_id(visit: Visit) -> uuid.UUID:
    return parse_uuid(visit.request.path_params["inbox_id"], "inbox")


def inbox_page(visit: Visit, code: int = 200, errors: dict[str, str] | None = None,
               values: dict[str, str] | None = None) -> Response:
    inbox_id = _inbox_id(visit)
    call = visit.call(ids={"inbox_id": inbox_id}, owner=("inbox", inbox_id))
    inbox = api.show_inbox(call)
    columns = [inbound_events.c[n] for n in ("id", "status", "dedupe_key", "received_at", "processed_at", "error")]
    with call.transaction() as conn:
        deliveries = conn.execute(select(*columns).where(inbound_events.c.tenant_id == inbox.tenant_id,
                                                         inbound_events.c.inbox_id == inbox.id)
                                  .order_by(inbound_events.c.received_at.desc()).limit(10)).all()
    return visit.render("inbox.html", code, title=inbox.name, inbox=inbox, deliveries=deliveries,
                        errors=errors or {}, values=values if values is not None else
                        {"name": inbox.name, **flatten(inbox.settings)},
                        notice=NOTICES.get(visit.request.query_params.get("notice", ""), ""), issued=ISSUED_SECRETS)


def update_inbox(visit: Visit) -> Response:
    inbox_id = _inbox_id(visit)
    values = {name: visit.value(name) for name in ("name", *INBOX_FIELDS) if name in visit.form}
    try:
        settings = nested(numbers(values), "settings")
        body = checked(InboxUpdate, {"name": values.get("name") or None, "settings": settings})
        api.update_inbox(visit.call(body=body, ids={"inbox_id": inbox_id}, owner=("inbox", inbox_id)))
    except Invalid as exc:
        return inbox_page(visit, 422, exc.fields, values)
    return redirect(f"/inboxes/{inbox_id}", notice="saved")


def set_inbox_state(visit: Visit) -> Response:
    inbox_id = _inbox_id(visit)
    disable = visit.request.url.path.endswith("/disable")
    call = visit.call(ids={"inbox_id": inbox_id}, owner=("inbox", inbox_id))
    (api.disable_inbox if disable else api.enable_inbox)(call)
    return redirect(f"/inboxes/{inbox_id}", notice="disabled" if disable else "enabled")


def overlap_seconds(hours: str) -> int | str:
    """Hours as typed, in seconds; anything else (a word, "²", more hours than a float holds) goes to the
    model as typed, whose message then names the field."""
    if not (hours.isascii() and hours.replace(".", "", 1).isdigit()):
        return hours
    seconds = float(hours) * 3600
    return round(seconds) if math.isfinite(seconds) else hours


def rotate(visit: Visit) -> Response:
    inbox_id = _inbox_id(visit)
    hours = visit.value("overlap_hours") or "24"
    given = {name: visit.value(f"secrets.{name}") for name in ISSUED_SECRETS if visit.value(f"secrets.{name}")}
    try:
        body = checked(RotateSecrets, {"overlap_seconds": overlap_seconds(hours), "secrets": given})
        rotated = api.rotate_secrets(visit.call(body=body, ids={"inbox_id": inbox_id}, owner=("inbox", inbox_id)))
    except Invalid as exc:
        fields = {("overlap_hours" if k == "overlap_seconds" else k): v for k, v in exc.fields.items()}
        return inbox_page(visit, 422, fields)
    return visit.render("secrets.html", title="New secrets", inbox=rotated.inbox, secrets=rotated.secrets,
                        webhook_url=rotated.webhook_url, created=False)


def routes(console: Console) -> list[Route]:
    t, i = "/tenants/{tenant_id}", "/inboxes/{inbox_id}"
    return [
        Route("/tenants", page(console, list_page), methods=["GET"]),
        Route("/tenants", page(console, create_tenant), methods=["POST"]),
        Route(t, page(console, tenant_page), methods=["GET"]),
        Route(t + "/settings", page(console, update_tenant), methods=["POST"]),
        Route(t + "/disable", page(console, set_tenant_state), methods=["POST"]),
        Route(t + "/enable", page(console, set_tenant_state), methods=["POST"]),
        Route(t + "/inboxes", page(console, create_inbox), methods=["POST"]),
        Route(i, page(console, inbox_page), methods=["GET"]),
        Route(i + "/settings", page(console, update_inbox), methods=["POST"]),
        Route(i + "/disable", page(console, set_inbox_state), methods=["POST"]),
        Route(i + "/enable", page(console, set_inbox_state), methods=["POST"]),
        Route(i + "/rotate-secrets", page(console, rotate), methods=["POST"]),
    ]
