"""The admin process's jobs in the console: every one a key may see, with its status and progress, live, and
a cancel button for those that can stop.

The list is the API's (`GET /v1/admin/jobs`, the same handler), so an operator sees every job and a tenant key
its own tenant's; the page refreshes its table every two seconds (paused while the tab is hidden).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from pipelines.control.errors import Invalid
from pipelines.control.models import Listing
from workers.admin import operations as api
from workers.admin.background import JobView
from workers.admin.console.failures import tenant_names
from workers.admin.console.web import Console, Visit, checked, offset_of, page

PAGE_SIZE = 50
STATUS_CHOICES = ("", "running", "succeeded", "failed", "cancelled")


def _listing(visit: Visit) -> dict[str, Any]:
    status, offset = visit.value("status"), visit.value("offset") or "0"
    errors: dict[str, str] = {}
    listing: Listing[JobView] | None = None
    try:
        query = checked(api.JobQuery, {"status": status or None, "offset": offset, "limit": PAGE_SIZE})
        listing = api.list_jobs(visit.call(query=query))
    except Invalid as exc:
        errors = exc.fields
    names = tenant_names(visit, {j.tenant_id for j in listing.items} | {j.subject_id for j in listing.items}) \
        if listing else {}
    return {"listing": listing, "errors": errors, "status": status, "names": names, "offset": offset_of(offset),
            "page_size": PAGE_SIZE, "statuses": STATUS_CHOICES}


def list_page(visit: Visit) -> Response:
    params = visit.request.query_params
    refresh = "/jobs/table" + (f"?{params}" if params else "")
    return visit.render("jobs.html", title="Jobs", refresh=refresh, **_listing(visit))


def table_fragment(visit: Visit) -> Response:
    return visit.fragment("jobs_table.html", **_listing(visit))


def routes(console: Console) -> list[Route]:
    # Before the routes of one job (`/jobs/{job_id}`), so that /jobs/table is never taken for a job's id.
    return [
        Route("/jobs", page(console, list_page), methods=["GET"]),
        Route("/jobs/table", page(console, table_fragment, fragment=True), methods=["GET"]),
    ]
