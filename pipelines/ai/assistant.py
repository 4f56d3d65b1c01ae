"""Choosing the AI provider for a tenant (deployment settings, tenant overrides, budget) and running assist."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Connection, Engine

from config import Settings
from db.tenancy import TenantId, bind_tenant
from pipelines import assist
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
    """Classify (and where the inbox wants it, draft for) these messages; idempotent per prompt version."""
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        contexts = assist.load(conn, tenant, message_ids, force=force)
        tenant_ai = _tenant_ai(conn, tenant)
        within = assist.check_budget(conn, tenant, tenant_ai.get("monthly_budget_usd"))
    provider = provider_for(settings, tenant_ai, within_budget=within)

    def read(fn: Callable[[Connection], Any]) -> Any:
        with engine.begin() as conn:
            bind_tenant(conn, tenant)
            return fn(conn)

    counts = {"classified": 0, "drafted": 0}
    for ctx in contexts:
        if not (ctx.want_classification or ctx.want_draft):
            continue
        if limiter is not None and provider.name != "local":
            with limiter(provider.name):
                results = assist.think(read, tenant, ctx, provider)
        else:
            results = assist.think(read, tenant, ctx, provider)
        with engine.begin() as conn:
            bind_tenant(conn, tenant)
            stored = assist.store(conn, tenant, ctx, results, settings.ai_prices, force=force)
            assist.check_budget(conn, tenant, tenant_ai.get("monthly_budget_usd"))
        counts["classified"] += stored["classification"]
        counts["drafted"] += stored["draft"]
    return counts


def _tenant_ai(conn: Connection, tenant: TenantId) -> dict[str, Any]:
    from sqlalchemy import text

    settings = conn.execute(text("SELECT settings FROM tenants WHERE id = :t"), {"t": tenant}).scalar()
    return assist.ai_settings(settings)
