"""What a tenant's AI costs: usage rows priced as written, the monthly budget checked, and the month read back.

Every provider call that is paid for leaves one `ai_usage` row (feature `classify`, `draft`, `embed` for a
message, `knowledge` for a knowledge import), priced from `INTAKE_AI_PRICES` at the time. Retention rolls old
rows up into `ai_usage_monthly` (`pipelines.lifecycle.retention`); the month's spend is the sum of both, so
a budget is not reset by a rollup. `check_budget` raises the 80% and 100% alerts (each once a month, a
`budget_alerts` row and a `budget.alert` change told to the caller's `feed`, which the caller records as its
transaction's last statement).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from db import direct
from db.schema import ai_usage, budget_alerts
from db.tenancy import TenantId
from pipelines.ai.base import Usage
from pipelines.changes import Change
from pipelines.control.errors import Conflict
from pipelines.control.fields import Model

THRESHOLDS = (80, 100)
MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")

# The month's rows and its rolled-up rows, by feature, provider and model.
MONTH_USAGE = text("""
SELECT feature, provider, model, sum(calls) AS calls, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       sum(cost_usd) AS cost_usd
FROM (
    SELECT feature, provider, model, count(*) AS calls, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
           sum(cost_usd) AS cost_usd
    FROM ai_usage WHERE tenant_id = :t AND created_at >= :start AND created_at < :end
    GROUP BY feature, provider, model
    UNION ALL
    SELECT feature, provider, model, calls, tokens_in, tokens_out, cost_usd
    FROM ai_usage_monthly WHERE tenant_id = :t AND month = :start
) AS u
GROUP BY feature, provider, model ORDER BY feature, provider, model
""")
MONTH_SPENT = text("""
SELECT coalesce((SELECT sum(cost_usd) FROM ai_usage WHERE tenant_id = :t AND created_at >= :start
                 AND created_at < :end), 0)
     + coalesce((SELECT sum(cost_usd) FROM ai_usage_monthly WHERE tenant_id = :t AND month = :start), 0) AS spent
""")
MONTH_ALERTS = text("""
SELECT threshold, spent_usd, budget_usd, created_at FROM budget_alerts
WHERE tenant_id = :t AND month = :start ORDER BY threshold
""")
TENANT_BUDGET = text("SELECT settings -> 'ai' -> 'monthly_budget_usd' AS budget FROM tenants WHERE id = :t")


BUDGET_SPENT = ("the tenant's AI budget for this month is spent (${spent:.6f} of ${budget:.2f}): "
                "a hosted provider is not called for it until next month or a larger ai.monthly_budget_usd")


class MonthQuery(Model):
    """`?month=YYYY-MM` (UTC); none: this month."""

    month: str | None = Field(default=None, min_length=7, max_length=7, pattern=MONTH.pattern,
                              description="YYYY-MM (UTC); this month when absent")


class UsageLine(BaseModel):
    feature: str
    provider: str
    model: str
    calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: float


class AlertView(BaseModel):
    threshold: int
    spent_usd: float
    budget_usd: float
    created_at: datetime


class MonthUsage(BaseModel):
    """A tenant's AI spend in one month, and where it stands against the budget."""

    tenant_id: uuid.UUID
    month: str = Field(description="YYYY-MM (UTC)")
    cost_usd: float
    budget_usd: float | None = Field(description="The tenant's monthly budget; null: none set")
    budget_used: float | None = Field(description="cost_usd / budget_usd (1.0 is the whole budget)")
    calls: int
    tokens_in: int
    tokens_out: int
    lines: list[UsageLine] = Field(description="By feature, provider and model")
    alerts: list[AlertView] = Field(description="The month's budget alerts (80% and 100%)")


def month_start(month: str | None, now: datetime | None = None) -> date:
    """The first day of a `YYYY-MM` month, or of this one (UTC); anything else is a ValueError."""
    if month is None:
        return (now or datetime.now(UTC)).date().replace(day=1)
    if not MONTH.fullmatch(month):
        raise ValueError("month must be YYYY-MM, such as 2026-12")
    return date(int(month[:4]), int(month[5:]), 1)


def _next(start: date) -> date:
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def cost(usage: Usage, prices: dict[str, tuple[float, float]]) -> Decimal:
    price_in, price_out = prices.get(usage.model, (0.0, 0.0))
    return (Decimal(str(price_in)) * usage.tokens_in + Decimal(str(price_out)) * usage.tokens_out) / Decimal(1_000_000)


def record_usage(conn: Connection, tenant: TenantId, message_id: uuid.UUID | None,
                 usages: list[tuple[str, Usage]], prices: dict[str, tuple[float, float]]) -> None:
    """One row per (feature, usage), sent together (one multi-row INSERT)."""
    if not usages:
        return
    conn.execute(insert(ai_usage), [{
        "tenant_id": tenant, "message_id": message_id, "feature": feature, "provider": usage.provider,
        "model": usage.model, "tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out,
        "cost_usd": cost(usage, prices), "latency_ms": usage.latency_ms} for feature, usage in usages])


def spent(conn: Connection, tenant: TenantId, start: date) -> Decimal:
    (row,) = direct.rows(conn, MONTH_SPENT, {"t": tenant, "start": start, "end": _next(start)})
    return Decimal(row.spent)


def budget_of(tenant_settings: dict[str, Any] | None) -> float | None:
    ai = (tenant_settings or {}).get("ai")
    value = ai.get("monthly_budget_usd") if isinstance(ai, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_budget(conn: Connection, tenant: TenantId, budget_usd: float | None, now: datetime | None = None, *,
                 feed: list[Change] | None = None) -> bool:
    """Raise the 80% and 100% alerts for this month (each once, told to `feed`); True while the tenant may
    still spend."""
    if not budget_usd:
        return True
    month = month_start(None, now)
    total = spent(conn, tenant, month)
    budget = Decimal(str(budget_usd))
    for threshold in THRESHOLDS:
        if total >= budget * threshold / 100:
            alert = conn.execute(pg_insert(budget_alerts).values(
                tenant_id=tenant, month=month, threshold=threshold, spent_usd=total, budget_usd=budget)
                .on_conflict_do_nothing().returning(budget_alerts.c.id)).scalar()
            if alert is not None and feed is not None:
                feed.append(Change("budget.alert", {"budget_alert": {
                    "id": alert, "month": month.isoformat(), "threshold": threshold, "spent_usd": float(total),
                    "budget_usd": float(budget)}}, subject_id=alert))
    return total < budget


def require_budget(conn: Connection, tenant: TenantId, budget_usd: float | None, *,
                   feed: list[Change] | None = None) -> None:
    """Refuse (409) a hosted call that cannot fall back: a knowledge base embedded by two models would
    compare vectors that do not compare, so an import over budget waits instead of going local."""
    if not check_budget(conn, tenant, budget_usd, feed=feed):
        raise Conflict(BUDGET_SPENT.format(spent=spent(conn, tenant, month_start(None)), budget=budget_usd))


def month_usage(conn: Connection, tenant: TenantId, month: str | None = None,
                now: datetime | None = None) -> MonthUsage:
    """The tenant's spend in `month` (YYYY-MM, UTC; this month when None), by feature, provider and model."""
    start = month_start(month, now)
    params = {"t": tenant, "start": start, "end": _next(start)}
    lines = [UsageLine(feature=r.feature, provider=r.provider, model=r.model, calls=int(r.calls),
                       tokens_in=int(r.tokens_in), tokens_out=int(r.tokens_out), cost_usd=float(r.cost_usd))
             for r in direct.rows(conn, MONTH_USAGE, params)]
    alerts = [AlertView(threshold=r.threshold, spent_usd=float(r.spent_usd), budget_usd=float(r.budget_usd),
                        created_at=r.created_at) for r in direct.rows(conn, MONTH_ALERTS, params)]
    raw = conn.execute(TENANT_BUDGET, {"t": tenant}).scalar()
    budget = budget_of({"ai": {"monthly_budget_usd": raw}})
    total = float(sum(Decimal(str(line.cost_usd)) for line in lines))
    return MonthUsage(
        tenant_id=tenant, month=start.strftime("%Y-%m"), cost_usd=round(total, 6), budget_usd=budget,
        budget_used=round(total / budget, 4) if budget else None, calls=sum(line.calls for line in lines),
        tokens_in=sum(line.tokens_in for line in lines), tokens_out=sum(line.tokens_out for line in lines),
        lines=lines, alerts=alerts)
