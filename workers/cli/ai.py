"""`intake kb import` and `intake ai reclassify`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import click
from sqlalchemy import Connection, text

from config import get_settings
from db.engine import make_engine
from db.tenancy import resolve_tenant
from workers.cli.common import When, emit, friendly_errors, out, progress, runtime


@click.group()
def kb() -> None:
    """The tenant's knowledge base, which grounds drafted replies."""


@kb.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def kb_import(path: Path, tenant_id: str, as_json: bool) -> None:
    """Import Markdown, HTML and text files (a file or a folder); unchanged files cost nothing.

    Each file embedded is metered in `ai_usage` (feature `knowledge`); with a hosted provider and the month's
    budget spent, the import stops at the first file to embed (the files before it stay imported)."""
    from pipelines import knowledge
    from pipelines.ai import spend
    from pipelines.assistant import provider_for

    rt = runtime()
    settings = get_settings()
    engine = make_engine(rt.database_url, prepared_statements=rt.settings.db_prepared_statements,
                         pool_size=1, application_name="intake-kb")
    with engine.begin() as conn:
        tenant = resolve_tenant(conn, tenant_id)
        from pipelines.assist import ai_settings

        raw = conn.execute(text("SELECT settings FROM tenants WHERE id = :t"), {"t": tenant}).scalar()
        tenant_ai = ai_settings(raw)
    provider = provider_for(settings, tenant_ai, within_budget=True)  # checked per file, before it embeds
    metering = knowledge.Metering(settings.ai_prices, spend.budget_of(raw))
    found = knowledge.files(path)
    if not found:
        raise click.UsageError(f"no .md, .markdown, .html, .htm or .txt files in {path}")

    def transaction() -> Iterator[Connection]:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(tenant)})
            yield conn

    with progress() as bar:
        task = bar.add_task("importing", total=len(found))
        results = knowledge.import_path(transaction, tenant, path, provider, settings.embedding_dim,
                                        on_file=lambda _: bar.advance(task), metering=metering)
    engine.dispose()
    summary = {status: sum(1 for r in results if r.status == status) for status in ("created", "updated", "unchanged")}
    data = {"files": len(results), **summary, "chunks": sum(r.chunks for r in results),
            "documents": [{"source": r.source, "status": r.status, "chunks": r.chunks} for r in results]}
    if as_json:
        emit(data)
    else:
        out.print(f"{len(results)} files: {summary['created']} new, {summary['updated']} updated, "
                  f"{summary['unchanged']} unchanged; {data['chunks']} chunks written")


@click.group()
def ai() -> None:
    """Classification and drafting."""


@ai.command("reclassify")
@click.option("--tenant", "tenant_id", required=True, help="The tenant's id.")
@click.option("--since", type=When(), default=None, help="Only messages sent since (ISO time or age: 7d).")
@click.option("--batch", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def ai_reclassify(tenant_id: str, since: datetime | None, batch: int, as_json: bool) -> None:
    """Classify the tenant's inbound messages again with the current provider and prompt version."""
    from pipelines.assistant import assist_messages

    rt = runtime()
    settings = get_settings()
    engine = make_engine(rt.database_url, prepared_statements=rt.settings.db_prepared_statements,
                         pool_size=2, application_name="intake-ai")
    with engine.begin() as conn:
        tenant = resolve_tenant(conn, tenant_id)
        ids = [r[0] for r in conn.execute(text(
            "SELECT id FROM messages WHERE tenant_id = :t AND direction = 'inbound' "
            "AND (CAST(:since AS timestamptz) IS NULL OR sent_at >= :since) ORDER BY sent_at"),
            {"t": tenant, "since": since})]
    classified = 0
    with progress() as bar:
        task = bar.add_task("reclassifying", total=len(ids))
        for start in range(0, len(ids), batch):
            chunk: list[uuid.UUID] = ids[start:start + batch]
            classified += assist_messages(engine, settings, tenant, chunk, force=True)["classified"]
            bar.advance(task, len(chunk))
    engine.dispose()
    if as_json:
        emit({"messages": len(ids), "classified": classified})
    else:
        out.print(f"reclassified {classified} of {len(ids)} messages")
