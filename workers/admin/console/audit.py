"""The audit trail in the console: who changed what, when, filterable by tenant, action and time."""

from __future__ import annotations

import json

from starlette.responses import Response
from starlette.routing import Route

from pipelines.control.errors import Invalid
from pipelines.control.models import AuditEntry, Listing
from workers.admin import operations as api
from workers.admin.console.web import Console, Visit, checked, offset_of, page

PAGE_SIZE = 50
FILTERS = ("tenant_id", "action", "since")


def list_page(visit: Visit) -> Response:
    given = {name: visit.value(name) for name in FILTERS if visit.value(name)}
    if not visit.principal.operator:
        given.pop("tenant_id", None)
    offset = visit.value("offset") or "0"
    errors: dict[str, str] = {}
    listing: Listing[AuditEntry] | None = None
    try:
        listing = api.list_audit(visit.call(query=checked(api.AuditQuery, {**given, "offset": offset,
                                                                            "limit": PAGE_SIZE})))
    except Invalid as exc:
        errors = exc.fields
    return visit.render("audit.html", title="Audit", listing=listing, filters=given, errors=errors,
                        offset=offset_of(offset), page_size=PAGE_SIZE,
                        compact=lambda value: json.dumps(value, sort_keys=True, ensure_ascii=False))


def routes(console: Console) -> list[Route]:
    return [Route("/audit", page(console, list_page), methods=["GET"])]
