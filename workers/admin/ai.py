"""The endpoints of a tenant's AI: its labelled examples and its trained classifier.

    GET    /v1/admin/tenants/{id}/ai/examples   a page of examples (filters: category, source)
    POST   /v1/admin/tenants/{id}/ai/examples   a batch of examples, all or none (201)
    DELETE /v1/admin/tenants/{id}/ai/examples   examples by ids, category and/or source
    GET    /v1/admin/tenants/{id}/ai/model      the latest model (404 while there is none)
    POST   /v1/admin/tenants/{id}/ai/train      train now and answer with the new model
    GET    /v1/admin/tenants/{id}/ai/usage      the month's spend (?month=YYYY-MM) against the budget
    GET    /v1/admin/tenants/{id}/kb/documents  the knowledge base's documents, by source
    DELETE /v1/admin/tenants/{id}/kb/documents/{document_id}   a document and its chunks

Each handler calls the function `intake ai examples ...` and `intake ai train` call (`pipelines.ai.examples`,
`pipelines.ai.training`) in a transaction bound to the tenant; a change to the examples schedules a
background training after its commit (`workers.training`).
"""

from __future__ import annotations

from db.tenancy import TenantId
from pipelines.ai import documents, examples, spend, training
from pipelines.control.errors import NotFound
from pipelines.control.models import Listing, Page
from workers.admin.data import as_fleet
from workers.admin.http import Call, Endpoint
from workers.training import schedule

PREFIX = "/v1/admin/tenants/{tenant_id}/ai"
TENANT = ("tenant", "tenant_id")
# 10,000 examples of up to 2,000 characters, each up to 4 bytes in UTF-8 and more when JSON-escaped.
MAX_BATCH_BODY = 24 * 1024 * 1024


def _tenant(call: Call) -> TenantId:
    assert call.tenant is not None  # every route here names a tenant
    return TenantId(call.tenant)


def changed(call: Call, tenant: TenantId) -> None:
    """After a commit that changed the examples: train again soon (coalesced)."""
    if call.admin.redis is not None:
        schedule(call.admin.redis, tenant, call.admin.settings.ai_train_delay_seconds)


def list_examples(call: Call) -> Listing[examples.ExampleView]:
    tenant, query = _tenant(call), call.query
    with as_fleet(call, tenant).begin() as conn:
        items, more = examples.list_examples(conn, tenant, query)
    return Listing[examples.ExampleView](items=items, next_offset=query.offset + query.limit if more else None)


def add_examples(call: Call) -> examples.ImportResult:
    tenant, batch = _tenant(call), call.body
    given = [examples.Example(e.text, e.category, i) for i, e in enumerate(batch.examples)]
    with as_fleet(call, tenant).begin() as conn:
        result = examples.import_examples(conn, tenant, given, create_categories=batch.create_categories,
                                          actor=call.actor, what="examples")
    if result.added:
        changed(call, tenant)
    return result


def delete_examples(call: Call) -> examples.Deleted:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        result = examples.delete_examples(conn, tenant, call.body, actor=call.actor)
    if result.deleted:
        changed(call, tenant)
    return result


def show_model(call: Call) -> training.ModelView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        view = training.describe(conn, tenant)
    if view is None:
        raise NotFound("this tenant has no trained model: it has no examples of its own yet")
    return view


def train(call: Call) -> training.ModelView:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return training.train_tenant(conn, tenant, actor=call.actor)


def usage(call: Call) -> spend.MonthUsage:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return spend.month_usage(conn, tenant, call.query.month)


def list_documents(call: Call) -> Listing[documents.DocumentView]:
    tenant, page = _tenant(call), call.query
    with as_fleet(call, tenant).begin() as conn:
        items, more = documents.list_documents(conn, tenant, limit=page.limit, offset=page.offset)
    return Listing[documents.DocumentView](items=items, next_offset=page.offset + page.limit if more else None)


def delete_document(call: Call) -> documents.DeletedDocument:
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        return documents.delete_document(conn, tenant, call.ids["document_id"], actor=call.actor)


def endpoints() -> list[Endpoint]:
    e, kb = f"{PREFIX}/examples", "/v1/admin/tenants/{tenant_id}/kb/documents"
    return [
        Endpoint("GET", e, "A tenant's labelled examples, newest first", list_examples,
                 Listing[examples.ExampleView], query=examples.ExampleQuery, owner=TENANT),
        Endpoint("POST", e, "Add labelled examples, all or none (unknown categories refused unless "
                 "create_categories)", add_examples, examples.ImportResult, body=examples.ExampleBatch, status=201,
                 owner=TENANT, max_body=MAX_BATCH_BODY),
        Endpoint("DELETE", e, "Delete examples by ids, category and/or source", delete_examples, examples.Deleted,
                 body=examples.ExampleFilter, owner=TENANT),
        Endpoint("GET", f"{PREFIX}/model", "The tenant's latest trained classifier", show_model,
                 training.ModelView, owner=TENANT),
        Endpoint("POST", f"{PREFIX}/train", "Train the tenant's classifier now (waits) and answer with it", train,
                 training.ModelView, owner=TENANT),
        Endpoint("GET", f"{PREFIX}/usage", "The tenant's AI spend in a month (YYYY-MM, UTC; this month by "
                 "default), by feature, provider and model, with its budget and alerts", usage, spend.MonthUsage,
                 query=spend.MonthQuery, owner=TENANT),
        Endpoint("GET", kb, "The tenant's knowledge documents, by source", list_documents,
                 Listing[documents.DocumentView], query=Page, owner=TENANT),
        Endpoint("DELETE", kb + "/{document_id}", "Delete a knowledge document and its chunks", delete_document,
                 documents.DeletedDocument, owner=TENANT),
    ]
