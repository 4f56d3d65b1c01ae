"""Choosing the AI provider for a tenant (deployment settings, tenant overrides, budget) and running assist."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Connection, Engine

from config import Settings
from db.tenancy import TenantId, bind_tenant
from pipelines import assist, changes
from pipelines.ai import spend
from pipelines.ai.base import Provider
from pipelines.ai.local import LocalProvider

log = structlog.get_logger("intake.ai")
_providers: dict[tuple[str, str, str], Provider] = {}


def provider_for(settings: Settings, tenant_ai: dict[str, Any], *, within_budget: bool) -> Provider:
    name = str(tenant_ai.get("provider") or settings.ai_provider)
    if name == "openai" and within_budget:
        model = str(tenant_ai.get("model") or settings.ai_model)
        key = ("openai", settings.ai_base_url, model)
        if key not in _providers:
            from pipelines.ai.openai import OpenAIProvider

            embedding_model = settings.embedding_model if settings.embedding_model != "local-ngram-v1" else ""
            _providers[key] = OpenAIProvider(settings.ai_base_url, settings.ai_api_key, model,
                                             embedding_model=embedding_model, timeout=settings.ai_timeout_seconds,
                                             max_retries=settings.ai_max_retries)
        return _providers[key]
    if name == "openai":
        log.warning("ai.budget.exhausted", fallback="local")
    return _providers.setdefault(("local", str(settings.embedding_dim), ""), LocalProvider(settings.embedding_dim))


def assist_messages(engine: Engine, settings: Settings, tenant: TenantId, message_ids: list[uuid.UUID], *,
                    force: bool = False, limiter: Callable[[str], Any] | None = None) -> dict[str, int]:
    """Classify (and where the inbox wants it, draft for) these messages; idempotent per prompt version.

    Each message's results are stored in a transaction of its own, so a message that fails leaves the
    others' results in place. How the reads are made depends on how long the provider takes.
    """
    with engine.connect() as conn:
        conn.begin()
        bind_tenant(conn, tenant)
        contexts = [c for c in assist.load(conn, tenant, message_ids, force=force)
                    if c.want_classification or c.want_draft]
        if not contexts:  # done before, outbound or gone: the budget is checked where money is spent
            conn.commit()
            return {"classified": 0, "drafted": 0}
        tenant_ai = contexts[0].ai
        alerts: list[changes.Change] = []
        within = spend.check_budget(conn, tenant, tenant_ai.get("monthly_budget_usd"), feed=alerts)
        provider = provider_for(settings, tenant_ai, within_budget=within)
        job = Job(settings, tenant, tenant_ai.get("monthly_budget_usd"), force)
        if provider.name == "local":  # the alerts are recorded with the first message's results
            return _assist_in_process(conn, job, contexts, provider, alerts)
        changes.record(conn, tenant, alerts)
        conn.commit()
    return _assist_hosted(engine, job, contexts, provider, limiter)


@dataclass(frozen=True)
class Job:
    """What every message of one job shares."""

    settings: Settings
    tenant: TenantId
    budget_usd: float | None
    force: bool


def _assist_in_process(conn: Connection, job: Job, contexts: list[assist.Context], provider: Provider,
                       feed: list[changes.Change]) -> dict[str, int]:
    """The local provider answers in-process in milliseconds: a message's reads and its store share one
    transaction, the first message's being the one that read the job's messages, and the job keeps one
    connection. A transaction costs a BEGIN, the tenant's binding and a COMMIT, as much as its reads."""
    counts = {"classified": 0, "drafted": 0}
    for ctx in contexts:
        if not conn.in_transaction():
            conn.begin()
            bind_tenant(conn, job.tenant)
        results = assist.think(lambda fn: fn(conn), job.tenant, ctx, provider)
        _store(conn, job, ctx, results, counts, feed)
        conn.commit()
        feed = []
    return counts


def _assist_hosted(engine: Engine, job: Job, contexts: list[assist.Context], provider: Provider,
                   limiter: Callable[[str], Any] | None) -> dict[str, int]:
    """A hosted provider's call may take seconds: no connection is held and no transaction open while it
    runs, so every read is a short transaction of its own, and so is each store."""

    def read(fn: Callable[[Connection], Any]) -> Any:
        with engine.begin() as conn:
            bind_tenant(conn, job.tenant)
            return fn(conn)

    counts = {"classified": 0, "drafted": 0}
    for ctx in contexts:
        with limiter(provider.name) if limiter is not None else nullcontext():
            results = assist.think(read, job.tenant, ctx, provider)
        with engine.begin() as conn:
            bind_tenant(conn, job.tenant)
            _store(conn, job, ctx, results, counts, [])
    return counts


def _store(conn: Connection, job: Job, ctx: assist.Context, results: assist.Results, counts: dict[str, int],
           feed: list[changes.Change]) -> None:
    """Store one message's results and check the budget; their events are the transaction's last statement."""
    stored = assist.store(conn, job.tenant, ctx, results, job.settings.ai_prices, force=job.force, feed=feed)
    spend.check_budget(conn, job.tenant, job.budget_usd, feed=feed)
    counts["classified"] += stored["classification"]
    counts["drafted"] += stored["draft"]
    changes.record(conn, job.tenant, feed)
