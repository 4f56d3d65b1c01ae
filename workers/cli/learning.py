"""`intake ai examples import|list|delete`, `intake ai train` and `intake ai usage`: what a tenant's classifier
learns from, and what its AI costs.

Each command calls the function behind the admin API's endpoint (`pipelines.ai.examples`,
`pipelines.ai.training`) in a transaction of the fleet's role bound to the tenant, so both refuse and audit
alike. A change to the examples schedules the background training after its commit; `train` trains here and
waits for it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import click
from rich.markup import escape

from db.tenancy import TenantId
from pipelines.ai import documents, examples, spend, training
from workers.cli.common import BadInput, console, emit, friendly_errors, out, progress, runtime
from workers.cli.control import actor, build, show_list
from workers.cli.lifecycle import JSON, redis_client, tenant_transaction, uuid_argument
from workers.embedded.runtime import Runtime
from workers.training import schedule

SOURCES = click.Choice(["correction", "import", "taxonomy"])


def _changed(rt: Runtime, tenant: uuid.UUID) -> None:
    if rt.redis_url:
        client = redis_client(rt)
        try:
            schedule(client, tenant, rt.settings.ai_train_delay_seconds)
        finally:
            client.close()


@click.group("examples")
def examples_group() -> None:
    """Labelled examples (text and category) that train the tenant's classifier."""


@examples_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--create-categories", is_flag=True, help="Add categories the taxonomy lacks instead of refusing.")
@JSON
@friendly_errors
def examples_import(path: Path, tenant_id: str, create_categories: bool, as_json: bool) -> None:
    """Import a CSV file with a `text,category` header, or JSON Lines ({"text", "category"} a line): all or none."""
    tenant = uuid_argument(tenant_id, "--tenant")
    size = path.stat().st_size
    if size > examples.MAX_FILE_BYTES:
        raise BadInput(f"{path} is {size:,} bytes; at most {examples.MAX_FILE_BYTES:,} are read in one import")
    given = examples.parse(path.read_bytes(), path.name)
    rt = runtime()
    with progress() as bar, tenant_transaction(rt, tenant) as conn:
        task = bar.add_task("importing", total=len(given))
        result = examples.import_examples(conn, TenantId(tenant), given, create_categories=create_categories,
                                          actor=actor(), on_rows=lambda n: bar.advance(task, n))
    if result.added:
        _changed(rt, tenant)
    if as_json:
        emit(result.model_dump(mode="json"))
        return
    created = f"; new categories: {', '.join(result.categories_created)}" if result.categories_created else ""
    out.print(f"{result.added} examples added, {result.duplicates} already there; the tenant has "
              f"{result.examples}{escape(created)}", highlight=False)


@examples_group.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--category", default=None)
@click.option("--source", type=SOURCES, default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0, 1_000_000), default=0, show_default=True)
@JSON
@friendly_errors
def examples_list(tenant_id: str, category: str | None, source: str | None, limit: int, offset: int,
                  as_json: bool) -> None:
    """The tenant's examples, newest first."""
    from pipelines.control.models import Listing

    tenant = uuid_argument(tenant_id, "--tenant")
    query = build(examples.ExampleQuery, {"category": category, "source": source, "limit": limit, "offset": offset})
    with tenant_transaction(runtime(), tenant) as conn:
        items, more = examples.list_examples(conn, TenantId(tenant), query)
    listing = Listing[examples.ExampleView](items=items, next_offset=offset + limit if more else None)
    show_list(listing, as_json, ("id", "source", "category", "text"))


@examples_group.command("delete")
@click.argument("ids", nargs=-1)
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--category", default=None, help="Only this category's examples.")
@click.option("--source", type=SOURCES, default=None, help="Only examples of this source.")
@JSON
@friendly_errors
def examples_delete(ids: tuple[str, ...], tenant_id: str, category: str | None, source: str | None,
                    as_json: bool) -> None:
    """Delete examples: the ids given, or all of a category and/or source."""
    tenant = uuid_argument(tenant_id, "--tenant")
    which = build(examples.ExampleFilter, {"ids": [str(uuid_argument(i, "an example id")) for i in ids] or None,
                                           "category": category, "source": source})
    rt = runtime()
    with tenant_transaction(rt, tenant) as conn:
        result = examples.delete_examples(conn, TenantId(tenant), which, actor=actor())
    if result.deleted:
        _changed(rt, tenant)
    if as_json:
        emit(result.model_dump(mode="json"))
    else:
        out.print(f"{result.deleted} examples deleted; {result.examples} left")


@click.command("train")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@JSON
@friendly_errors
def train(tenant_id: str, as_json: bool) -> None:
    """Train the tenant's classifier now from its examples, its taxonomy's and its corrections (waits)."""
    tenant = uuid_argument(tenant_id, "--tenant")
    with console.status("training"), tenant_transaction(runtime(), tenant) as conn:
        view = training.train_tenant(conn, TenantId(tenant), actor=actor())
    if as_json:
        emit(view.model_dump(mode="json"))
        return
    if view.version is None:
        out.print(f"no model: the tenant has {view.examples} examples of its own in {view.categories} categories "
                  "(at least one example and two categories are needed); the keyword rules classify")
        return
    accuracy = "n/a (too few examples a category)" if view.accuracy is None else f"{view.accuracy:.1%}"
    out.print(f"model {view.model}: examples {view.examples}, categories {view.categories}, "
              f"cross-validated accuracy {accuracy}, trained in {view.train_seconds:.1f} s", highlight=False)


@click.command("usage")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--month", default=None, help="YYYY-MM (UTC); this month when not given.")
@JSON
@friendly_errors
def usage(tenant_id: str, month: str | None, as_json: bool) -> None:
    """The tenant's AI spend in a month, by feature, provider and model, against its budget."""
    tenant = uuid_argument(tenant_id, "--tenant")
    query = build(spend.MonthQuery, {"month": month})
    with tenant_transaction(runtime(), tenant) as conn:
        view = spend.month_usage(conn, TenantId(tenant), query.month)
    if as_json:
        emit(view.model_dump(mode="json"))
        return
    budget = "no budget set" if view.budget_usd is None else (
        f"budget ${view.budget_usd:,.2f} ({view.budget_used or 0:.1%} used)")
    out.print(f"{view.month}: ${view.cost_usd:,.6f} in {view.calls} calls "
              f"({view.tokens_in:,} tokens in, {view.tokens_out:,} out); {budget}", highlight=False)
    for line in view.lines:
        out.print(f"  {escape(line.feature)} {escape(line.provider)}/{escape(line.model)}: {line.calls} calls, "
                  f"{line.tokens_in:,} in, {line.tokens_out:,} out, ${line.cost_usd:,.6f}", highlight=False)
    for alert in view.alerts:
        out.print(f"  alert: {alert.threshold}% reached at {alert.created_at:%Y-%m-%d %H:%M} UTC "
                  f"(${alert.spent_usd:,.6f} of ${alert.budget_usd:,.2f})", highlight=False)


@click.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0, 1_000_000), default=0, show_default=True)
@JSON
@friendly_errors
def kb_list(tenant_id: str, limit: int, offset: int, as_json: bool) -> None:
    """The tenant's knowledge documents, by source."""
    from pipelines.control.models import Listing

    tenant = uuid_argument(tenant_id, "--tenant")
    with tenant_transaction(runtime(), tenant) as conn:
        items, more = documents.list_documents(conn, TenantId(tenant), limit=limit, offset=offset)
    listing = Listing[documents.DocumentView](items=items, next_offset=offset + limit if more else None)
    show_list(listing, as_json, ("id", "source", "chunk_count", "title"))


@click.command("delete")
@click.argument("document_id")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@JSON
@friendly_errors
def kb_delete(document_id: str, tenant_id: str, as_json: bool) -> None:
    """Delete a knowledge document and its chunks."""
    tenant = uuid_argument(tenant_id, "--tenant")
    document = uuid_argument(document_id, "DOCUMENT_ID")
    with tenant_transaction(runtime(), tenant) as conn:
        gone = documents.delete_document(conn, TenantId(tenant), document, actor=actor())
    if as_json:
        emit(gone.model_dump(mode="json"))
    else:
        out.print(f"deleted {escape(gone.source)} ({gone.chunks} chunks)", highlight=False)


COMMANDS = (examples_group, train, usage)
KB_COMMANDS = (kb_list, kb_delete)
