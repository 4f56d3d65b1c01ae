"""The failure ledger in the console: filter, count by error type, read one, replay or discard, watch the job.

Filtering, counting and paging happen in the database (the ledger's indexes on status, tenant and time), so
a ledger of a million rows pages as fast as one of a hundred. Replay and discard first run as a dry run, whose
count the confirmation shows; the confirmed action starts one of the admin process's jobs, whose page shows
its progress and can cancel it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select
from starlette.responses import Response
from starlette.routing import Route

from db.schema import tenants
from pipelines.control.errors import Invalid
from workers.admin import operations as api
from workers.admin.background import JobView
from workers.admin.console.web import Console, Visit, checked, offset_of, page, parse_uuid, redirect
from workers.ops import failures as ledger
from workers.queues import QUEUES

FILTERS = ("queue", "actor", "tenant_id", "error", "since", "until")
STATUS_CHOICES = ("dead", "replayed", "discarded", "resolved", "any")
PAGE_SIZE = 50


def filter_values(visit: Visit) -> dict[str, str]:
    """The filter fields as given (empty ones left out); a tenant key's tenant filter is its own."""
    values = {name: visit.value(name) for name in FILTERS if visit.value(name)}
    if not visit.principal.operator:
        values.pop("tenant_id", None)
    return values


def tenant_names(visit: Visit, ids: set[uuid.UUID | None]) -> dict[uuid.UUID, str]:
    """The names of the tenants on one page of rows (at most a page's worth of ids)."""
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return {}
    with visit.call().transaction() as conn:
        return {row.id: row.name for row in conn.execute(select(tenants.c.id, tenants.c.name)
                                                         .where(tenants.c.id.in_(wanted)))}


def list_page(visit: Visit) -> Response:
    given = filter_values(visit)
    status = visit.value("status") or "dead"
    offset = visit.value("offset") or "0"
    errors: dict[str, str] = {}
    listing, counts = None, []
    try:
        query = checked(api.FailureQuery, {**given, "status": None if status == "any" else status,
                                           "offset": offset, "limit": PAGE_SIZE})
        call = visit.call(query=query)
        listing = api.list_failures(call)
        filters = ledger.Filters(queue=query.queue, actor=query.actor, tenant=call.scope_tenant(query.tenant_id),
                                 error=query.error, since=query.since, until=query.until, status=query.status)
        with call.transaction() as conn:
            counts = ledger.counts_by_error(conn, filters)
    except Invalid as exc:
        errors = exc.fields
    names = tenant_names(visit, {f.tenant_id for f in listing.items}) if listing else {}
    return visit.render("failures.html", title="Failures", listing=listing, counts=counts, filters=given,
                        status=status, errors=errors, names=names, queues=QUEUES, statuses=STATUS_CHOICES,
                        offset=offset_of(offset), page_size=PAGE_SIZE,
                        total=sum(int(c["count"]) for c in counts))


def _detail(visit: Visit) -> api.FailureDetail:
    failure_id = parse_uuid(visit.request.path_params["failure_id"], "failure")
    return api.show_failure(visit.call(ids={"failure_id": failure_id}, owner=("failure", failure_id)))


def detail_page(visit: Visit) -> Response:
    failure = _detail(visit)
    return visit.render("failure.html", title=f"Failure {failure.exception_type}", failure=failure,
                        message=json.dumps(failure.message, indent=2, sort_keys=True, default=str))


def status_fragment(visit: Visit) -> Response:
    return visit.fragment("failure_status.html", failure=_detail(visit))


def _action(visit: Visit, *, dry_run: bool) -> tuple[str, str, dict[str, Any], JobView]:
    """What the form asks for (replay or discard; the selected ids, one id, or the filter), run by the API's
    handler: as a dry run it only counts."""
    action, _, scope = visit.value("action").partition(":")
    scope = scope or visit.value("scope")
    if action not in ("replay", "discard") or scope not in ("selected", "filter"):
        raise Invalid({"action": "choose replay or discard, of the selected failures or of the filter"})
    raw: dict[str, Any] = {"dry_run": dry_run}
    if scope == "selected":
        raw["ids"] = [i for i in visit.values("ids") if i]
        if not raw["ids"]:
            raise Invalid({"ids": "select at least one failure"})
    else:
        raw.update(filter_values(visit))
        raw["all"] = not any(name in raw for name in FILTERS)
    body = checked(api.FailureAction, raw)
    handler = api.replay_failures if action == "replay" else api.discard_failures
    return action, scope, raw, handler(visit.call(body=body))


def confirm_page(visit: Visit) -> Response:
    try:
        action, scope, raw, job = _action(visit, dry_run=True)
    except Invalid as exc:
        return visit.render("error.html", 422, title="Nothing to do", status=422,
                            detail="; ".join(exc.fields.values()))
    hidden = [(k, v) for k, v in raw.items() if k in FILTERS] + [("ids", i) for i in raw.get("ids", [])]
    return visit.render("confirm.html", title=f"Confirm {action}", action=action, scope=scope, count=job.total,
                        hidden=hidden, filters={k: v for k, v in raw.items() if k in FILTERS})


def run(visit: Visit) -> Response:
    _, _, _, job = _action(visit, dry_run=False)
    return redirect(f"/jobs/{job.id}")


def _job(visit: Visit) -> JobView:
    job_id = parse_uuid(visit.request.path_params["job_id"], "job")
    return api.show_job(visit.call(ids={"job_id": job_id}))


def job_page(visit: Visit) -> Response:
    job = _job(visit)
    return visit.render("job.html", title=f"Job {job.kind}", job=job)


def job_fragment(visit: Visit) -> Response:
    return visit.fragment("job_progress.html", job=_job(visit))


def cancel(visit: Visit) -> Response:
    job_id = parse_uuid(visit.request.path_params["job_id"], "job")
    api.cancel_job(visit.call(ids={"job_id": job_id}))
    return redirect(f"/jobs/{job_id}")


def routes(console: Console) -> list[Route]:
    return [
        Route("/failures", page(console, list_page), methods=["GET"]),
        Route("/failures/confirm", page(console, confirm_page), methods=["POST"]),
        Route("/failures/run", page(console, run), methods=["POST"]),
        Route("/failures/{failure_id}", page(console, detail_page), methods=["GET"]),
        Route("/failures/{failure_id}/status", page(console, status_fragment, fragment=True), methods=["GET"]),
        Route("/jobs/{job_id}", page(console, job_page), methods=["GET"]),
        Route("/jobs/{job_id}/progress", page(console, job_fragment, fragment=True), methods=["GET"]),
        Route("/jobs/{job_id}/cancel", page(console, cancel), methods=["POST"]),
    ]
