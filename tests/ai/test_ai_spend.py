"""What a tenant's AI costs, readable: knowledge imports metered and held to the budget, the month's spend at
the command line and over the admin API, and the budget's alerts in the change feed.

The hosted provider is the local stand-in of its API (tests/openai_server.py); `intake` runs as a user runs it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from tests.admin_server import client, make_key, make_tenant
from tests.openai_server import openai_stub
from tests.processes import intake_ok, intake_refused, run_intake

A = "/v1/admin"
# 5 tokens an embedding call (the stand-in's usage) at $100 a million: $0.0005 a file, priced as written.
PRICES = '{"text-embedding-3-small": [100, 0]}'
FILE_COST = 0.0005


@pytest.fixture
def hosted_env() -> Iterator[dict[str, str]]:
    """The environment of an `intake` pointed at the stand-in, with the embedding price raised to be seen."""
    with openai_stub() as (url, stub):
        stub.dim = get_settings().embedding_dim
        yield {**os.environ, "INTAKE_AI_BASE_URL": url, "INTAKE_AI_API_KEY": "sk-test", "INTAKE_AI_PRICES": PRICES}


def articles(folder: Path, *names: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.md").write_text(f"# {name.title()}\n\nWhat to know about {name}: it takes two days.\n")
    return folder


def tenant_with_budget(op: httpx.Client, admin_engine: Engine, budget: float | None) -> uuid.UUID:
    tenant = make_tenant(admin_engine, "Spend")
    ai: dict[str, object] = {"provider": "openai"}
    if budget is not None:
        ai["monthly_budget_usd"] = budget
    assert op.patch(f"{A}/tenants/{tenant}", json={"settings": {"ai": ai}}).status_code == 200
    return tenant


def feed_alerts(app_engine: Engine, tenant: uuid.UUID) -> list[int]:
    with app_engine.begin() as conn:
        bind_tenant(conn, TenantId(tenant))
        return [r[0]["budget_alert"]["threshold"] for r in conn.execute(text(
            "SELECT data FROM change_events WHERE type = 'budget.alert' ORDER BY seq"))]


def test_knowledge_imports_are_metered_and_stop_when_the_budget_is_spent(
        op: httpx.Client, admin_engine: Engine, app_engine: Engine, hosted_env: dict[str, str],
        tmp_path: Path) -> None:
    tenant = tenant_with_budget(op, admin_engine, 0.0009)  # the second file crosses 80% and 100%
    folder = articles(tmp_path / "kb", "billing", "refunds", "shipping")
    stopped = run_intake("kb", "import", str(folder), "--tenant", str(tenant), env=hosted_env)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "AI budget for this month is spent" in stopped.stderr
    listed = intake_ok("kb", "list", "--tenant", str(tenant))
    assert [d["source"] for d in listed["items"]] == ["billing.md", "refunds.md"]  # the third waits
    with app_engine.begin() as conn:
        bind_tenant(conn, TenantId(tenant))
        rows = conn.execute(text("SELECT feature, provider, model, tokens_in, cost_usd, message_id FROM ai_usage")).all()
    assert [(r.feature, r.provider, r.model, r.tokens_in, float(r.cost_usd), r.message_id) for r in rows] == [
        ("knowledge", "openai", "text-embedding-3-small", 5, FILE_COST, None)] * 2
    assert feed_alerts(app_engine, tenant) == [80, 100]  # each once, with the import that crossed it

    usage = intake_ok("ai", "usage", "--tenant", str(tenant))
    assert usage["month"] == datetime.now(UTC).strftime("%Y-%m")
    assert (usage["cost_usd"], usage["budget_usd"], usage["calls"], usage["tokens_in"]) == (
        pytest.approx(2 * FILE_COST), 0.0009, 2, 10)
    assert usage["budget_used"] == pytest.approx(2 * FILE_COST / 0.0009, abs=1e-4)
    assert usage["lines"] == [{"feature": "knowledge", "provider": "openai", "model": "text-embedding-3-small",
                               "calls": 2, "tokens_in": 10, "tokens_out": 0, "cost_usd": pytest.approx(0.001)}]
    assert [a["threshold"] for a in usage["alerts"]] == [80, 100]
    shown = run_intake("ai", "usage", "--tenant", str(tenant))
    assert shown.returncode == 0 and "knowledge openai/text-embedding-3-small: 2 calls" in shown.stdout
    assert "alert: 100% reached" in shown.stdout

    # A larger budget lets the rest in; unchanged files cost nothing and are not refused.
    assert op.patch(f"{A}/tenants/{tenant}", json={"settings": {"ai": {
        "provider": "openai", "monthly_budget_usd": 1}}}).status_code == 200
    again = intake_ok("kb", "import", str(folder), "--tenant", str(tenant), env=hosted_env)
    assert (again["created"], again["unchanged"]) == (1, 2)
    assert intake_ok("ai", "usage", "--tenant", str(tenant))["calls"] == 3


def test_a_local_import_is_metered_at_no_cost(admin_engine: Engine, app_engine: Engine, tmp_path: Path) -> None:
    tenant = make_tenant(admin_engine, "Spend local")
    intake_ok("kb", "import", str(articles(tmp_path / "kb", "billing")), "--tenant", str(tenant))
    usage = intake_ok("ai", "usage", "--tenant", str(tenant))
    assert usage["lines"] == [{"feature": "knowledge", "provider": "local", "model": "local-ngram-v1", "calls": 1,
                               "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}]
    assert (usage["budget_usd"], usage["budget_used"], usage["alerts"]) == (None, None, [])
    assert intake_ok("ai", "usage", "--tenant", str(tenant), "--month", "2020-02")["lines"] == []


def test_spend_over_the_api(base: str, op: httpx.Client, admin_engine: Engine, app_engine: Engine,
                            tmp_path: Path) -> None:
    tenant, other = make_tenant(admin_engine, "Spend API"), make_tenant(admin_engine, "Spend other")
    intake_ok("kb", "import", str(articles(tmp_path / "kb", "billing")), "--tenant", str(tenant))
    path = f"{A}/tenants/{tenant}/ai/usage"
    with client(base, make_key(admin_engine, tenant_id=tenant, name="spend")) as own:
        mine = own.get(path)
        assert mine.status_code == 200 and mine.json()["calls"] == 1
        assert mine.json() == op.get(path).json()  # the operator reads the same month
        assert own.get(path, params={"month": "2020-02"}).json()["lines"] == []
        nobody = uuid.uuid4()
        theirs, nothing = own.get(f"{A}/tenants/{other}/ai/usage"), own.get(f"{A}/tenants/{nobody}/ai/usage")
        assert theirs.status_code == nothing.status_code == 404  # another tenant's id: as an id of nothing
        assert theirs.json()["detail"].replace(str(other), "ID") == nothing.json()["detail"].replace(str(nobody), "ID")


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "26-01", "2026-1", "2026/01", "\uff12\uff10\uff12\uff16-01", "2026-01\x00",
                                   "2026-01-01", "x" * 10_000, "", "2026-01\u202e"])
def test_a_month_that_is_not_one_is_refused(op: httpx.Client, admin_engine: Engine, month: str) -> None:
    tenant = make_tenant(admin_engine, "Spend hostile")
    answer = op.get(f"{A}/tenants/{tenant}/ai/usage", params={"month": month})
    assert answer.status_code == 422 and "month" in answer.json()["fields"], answer.text


def test_the_command_refuses_what_is_not_a_month_or_a_tenant(admin_engine: Engine) -> None:
    tenant = str(make_tenant(admin_engine, "Spend hostile CLI"))
    for month in ("2026-13", "\uff12\uff10\uff12\uff16-01"):
        assert "month" in intake_refused("ai", "usage", "--tenant", tenant, "--month", month)
    assert "must be a UUID" in intake_refused("ai", "usage", "--tenant", "not-a-tenant")


def test_other_usage_queries_are_refused(op: httpx.Client, admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine, "Spend hostile 2")
    path = f"{A}/tenants/{tenant}/ai/usage"
    assert op.get(path, params={"tenant_id": str(uuid.uuid4())}).status_code == 422  # unknown parameters
    assert op.get(f"{A}/tenants/not-a-tenant/ai/usage").status_code == 404
