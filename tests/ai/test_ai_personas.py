"""A persona's model, temperature, length cap and active flag reach the hosted provider when drafting.

Personas are made over the admin API as a tenant's operator would; the drafts run against the local stand-in
of the hosted API (tests/openai_server.py), which records each request as it arrived.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import bind_tenant
from pipelines.inboxes import CreatedInbox
from tests.factories import deliver, new_inbox
from tests.openai_server import OpenAIStub, openai_stub

A = "/v1/admin"
# One answer that fits both schemas (pydantic ignores the other's fields): the stand-in answers every call with it.
ANSWER = json.dumps({"category": "billing", "priority": "normal", "sentiment": "neutral", "sentiment_score": 0,
                     "language": "en", "confidence": 0.8, "reasoning": "Asks about an invoice.", "team": None,
                     "text": "Hello, we are on it.", "cited_chunk_ids": []})


@pytest.fixture
def hosted() -> Iterator[OpenAIStub]:
    with openai_stub() as (url, stub):
        stub.default_content = ANSWER
        os.environ.update({"INTAKE_AI_BASE_URL": url, "INTAKE_AI_API_KEY": "sk-test"})
        get_settings.cache_clear()
        stub.dim = get_settings().embedding_dim
        try:
            yield stub
        finally:
            for key in ("INTAKE_AI_BASE_URL", "INTAKE_AI_API_KEY"):
                os.environ.pop(key)
            get_settings.cache_clear()


def hosted_inbox(app_engine: Engine) -> CreatedInbox:
    inbox = new_inbox(app_engine, "api")
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text("UPDATE tenants SET settings = jsonb_set(settings, '{ai}', CAST(:ai AS jsonb))"),
                     {"ai": json.dumps({"provider": "openai", "model": "gpt-4o-mini"})})
    return inbox


def draft_for(app_engine: Engine, inbox: CreatedInbox, stub: OpenAIStub) -> dict[str, Any]:
    """Deliver a message, classify and draft it, and answer with the request the stand-in got for the draft."""
    from pipelines.assistant import assist_messages

    n = uuid.uuid4().hex
    body = orjson.dumps({"id": n, "type": "message", "sent_at": datetime.now(UTC).isoformat(),
                         "text": "Where is my invoice for last month?", "contact": {"external_id": n}})
    (message_id,) = deliver(app_engine, inbox, body, "application/json",  # type: ignore[attr-defined]
                            headers={"webhook-id": n}).messages_created
    stub.requests.clear()
    assert assist_messages(app_engine, get_settings(), inbox.tenant_id, [message_id])["drafted"] == 1
    chats = [payload for path, payload, _ in stub.requests if path.endswith("/chat/completions")]
    drafts = [p for p in chats if p["response_format"]["json_schema"]["name"] == "draft"]
    classifications = [p for p in chats if p["response_format"]["json_schema"]["name"] == "classification"]
    assert len(drafts) == 1 and len(classifications) == 1
    # Classifying is the tenant's model's work, whatever the persona says.
    assert (classifications[0]["model"], classifications[0]["temperature"]) == ("gpt-4o-mini", 0)
    assert "max_tokens" not in classifications[0]
    return drafts[0]


def system_prompt(request: dict[str, Any]) -> str:
    return str(request["messages"][0]["content"])


def test_a_personas_model_temperature_and_length_reach_the_provider(
        op: httpx.Client, app_engine: Engine, hosted: OpenAIStub) -> None:
    inbox = hosted_inbox(app_engine)
    made = op.post(f"{A}/tenants/{inbox.tenant_id}/personas", json={
        "name": "Aino", "tone": "warm", "model": "gpt-4o", "temperature": 0.7, "max_tokens": 300,
        "is_default": True})
    assert made.status_code == 201, made.text
    assert (made.json()["max_tokens"], made.json()["active"]) == (300, True)
    request = draft_for(app_engine, inbox, hosted)
    assert request["model"] == "gpt-4o"
    assert request["temperature"] == pytest.approx(0.7)
    assert request["max_tokens"] == 300
    assert "You are Aino" in system_prompt(request) and "Tone: warm" in system_prompt(request)
    with app_engine.begin() as conn:  # the draft is priced as the model that wrote it
        bind_tenant(conn, inbox.tenant_id)
        usage = conn.execute(text("SELECT feature, model, cost_usd FROM ai_usage ORDER BY feature")).all()
    assert [(f, m) for f, m, _ in usage] == [("classify", "gpt-4o-mini"), ("draft", "gpt-4o"),
                                             ("embed", "text-embedding-3-small")]
    assert float(usage[1].cost_usd) == pytest.approx((120 * 2.50 + 40 * 10.00) / 1e6, rel=1e-6)


def test_an_inactive_persona_drafts_nothing(op: httpx.Client, app_engine: Engine, hosted: OpenAIStub) -> None:
    inbox = hosted_inbox(app_engine)
    tenant = inbox.tenant_id
    default = op.post(f"{A}/tenants/{tenant}/personas", json={
        "name": "Aino", "model": "gpt-4.1-mini", "temperature": 0.3, "is_default": True}).json()
    own = op.post(f"{A}/tenants/{tenant}/personas", json={
        "name": "Bob", "model": "gpt-4o", "temperature": 1.2, "max_tokens": 50, "active": False}).json()
    assert own["active"] is False
    assert op.patch(f"{A}/inboxes/{inbox.id}", json={"persona_id": own["id"]}).status_code == 200
    request = draft_for(app_engine, inbox, hosted)  # the inbox's own persona is inactive: the default drafts
    assert (request["model"], request["temperature"], "max_tokens" in request) == ("gpt-4.1-mini",
                                                                                   pytest.approx(0.3), False)
    assert "You are Aino" in system_prompt(request) and "Bob" not in system_prompt(request)

    assert op.patch(f"{A}/personas/{default['id']}", json={"active": False}).json()["active"] is False
    request = draft_for(app_engine, inbox, hosted)  # both inactive: the built-in persona and the tenant's model
    assert (request["model"], request["temperature"], "max_tokens" in request) == ("gpt-4o-mini", 0, False)
    assert "You are Customer support" in system_prompt(request)

    assert op.patch(f"{A}/personas/{own['id']}", json={"active": True}).json()["active"] is True
    request = draft_for(app_engine, inbox, hosted)  # active again: the inbox's own
    assert (request["model"], request["max_tokens"]) == ("gpt-4o", 50)
    assert "You are Bob" in system_prompt(request)


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 0), ("max_tokens", 40_000), ("max_tokens", "300"), ("max_tokens", 2.5), ("max_tokens", [300]),
    ("max_tokens", {"n": 300}), ("active", "yes"), ("active", 1), ("active", None), ("temperature", "0.7\x00"),
])
def test_persona_settings_refuse_what_is_not_one(op: httpx.Client, admin_engine: Engine, field: str,
                                                 value: object) -> None:
    from tests.admin_server import make_tenant

    tenant = make_tenant(admin_engine, "Persona hostile")
    answer = op.post(f"{A}/tenants/{tenant}/personas", json={"name": "Aino", field: value})
    assert answer.status_code == 422 and field in answer.json()["fields"], answer.text
    assert op.get(f"{A}/tenants/{tenant}/personas").json()["items"] == []


def test_persona_settings_at_the_command_line(admin_engine: Engine) -> None:
    from tests.admin_server import make_tenant
    from tests.processes import intake_ok, run_intake

    tenant = make_tenant(admin_engine, "Persona CLI")
    made = intake_ok("persona", "create", "--tenant", str(tenant), "Aino", "--max-tokens", "400", "--inactive")
    assert (made["max_tokens"], made["active"]) == (400, False)
    changed = intake_ok("persona", "update", made["id"], "--active", "--max-tokens", "200")
    assert (changed["max_tokens"], changed["active"]) == (200, True)
    refused = run_intake("persona", "update", made["id"], "--max-tokens", "0")
    assert refused.returncode == 1 and "max_tokens" in refused.stderr and "Traceback" not in refused.stderr
