"""Classification and drafting in the running fleet: real workers, real queues, real tables."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import bind_tenant
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.openai_server import openai_stub
from tests.processes import INTAKE, wait_for, worker
from tests.webhooks import fixture, sign

WORKER_ENV = {"INTAKE_JOB_MIN_BACKOFF_MS": "100", "INTAKE_JOB_MAX_BACKOFF_MS": "300", "INTAKE_JOB_MAX_RETRIES": "2"}


def post_api(base: str, inbox: CreatedInbox, msg_id: str, text_: str, email: str) -> None:
    import httpx

    body = orjson.dumps({"id": msg_id, "type": "message", "sent_at": datetime.now(UTC).isoformat(), "text": text_,
                         "contact": {"email": email, "name": "Ada Lovelace"}})
    url = f"{base}/v1/webhooks/api/{inbox.id}"
    headers, body = sign("api", inbox.secrets, url, body, "application/json")
    assert httpx.post(url, content=body, headers=headers).status_code == 200


def rows(engine: Engine, inbox: CreatedInbox, sql: str) -> list[object]:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return list(conn.execute(text(sql)).all())


def set_tenant_ai(engine: Engine, inbox: CreatedInbox, ai: dict[str, object]) -> None:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text("UPDATE tenants SET settings = jsonb_set(settings, '{ai}', CAST(:ai AS jsonb))"),
                     {"ai": json.dumps(ai)})


def test_messages_are_classified_drafted_and_routed(server: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text("INSERT INTO teams (tenant_id, name, keywords) VALUES (:t, 'Money', '{billing}')"),
                     {"t": inbox.tenant_id})
    subprocess.run([INTAKE, "kb", "import", str(Path(__file__).parents[1] / "data" / "kb"),
                    "--tenant", str(inbox.tenant_id)], check=True, capture_output=True, env=dict(os.environ))
    with worker(processes=1, threads=4, env=WORKER_ENV):
        post_api(server, inbox, "m1", "Hi, I was charged twice this month. How long does a refund take?",
                 "ada@example.com")
        wait_for(lambda: len(rows(app_engine, inbox, "SELECT 1 FROM ai_drafts")) == 1, timeout=60)
    ((category, language, provider, team_name, reasoning),) = rows(app_engine, inbox, """
        SELECT a.category, a.language, a.provider, t.name, a.reasoning FROM ai_classifications a
        LEFT JOIN teams t ON t.id = a.suggested_team_id""")
    assert (category, language, provider, team_name) == ("billing", "en", "local", "Money")
    assert "billing" in reasoning
    ((conv_category, conv_team),) = rows(app_engine, inbox, "SELECT category, suggested_team_id IS NOT NULL "
                                                            "FROM conversations")
    assert (conv_category, conv_team) == ("billing", True)
    ((content, status, cited),) = rows(app_engine, inbox, "SELECT content, status, cited_chunk_ids FROM ai_drafts")
    assert status == "pending" and content.startswith("Hi Ada,") and cited
    assert "5 business days" in content  # grounded in the refunds article
    usage = rows(app_engine, inbox, "SELECT feature, provider FROM ai_usage ORDER BY feature")
    assert usage == [("classify", "local"), ("draft", "local")] + [("knowledge", "local")] * 5  # a kb file each


def test_auto_replies_are_marked_and_not_drafted(stack: dict[str, str], app_engine: Engine) -> None:
    from tests.factories import deliver
    from workers.actors import assist_messages

    inbox = new_inbox(app_engine, "postmark")
    result = deliver(app_engine, inbox, *fixture("postmark/auto_reply.json"))
    (message_id,) = result.messages_created  # type: ignore[attr-defined]
    with worker(processes=1, threads=2, env=WORKER_ENV):
        assist_messages.send(str(inbox.tenant_id), [str(message_id)])
        assist_messages.send(str(inbox.tenant_id), [str(message_id)])  # a duplicate job changes nothing
        wait_for(lambda: len(rows(app_engine, inbox, "SELECT 1 FROM ai_classifications")) == 1, timeout=60)
        wait_for(lambda: redis.Redis.from_url(os.environ["REDIS_URL"]).hlen("dramatiq:ai.msgs") == 0, timeout=30)
    assert rows(app_engine, inbox, "SELECT category, priority, is_auto_reply FROM ai_classifications") == [
        ("auto_reply", "low", True)]
    assert rows(app_engine, inbox, "SELECT count(*) FROM ai_drafts") == [(0,)]
    assert rows(app_engine, inbox, "SELECT count(*) FROM ai_usage") == [(1,)]


def test_budget_alerts_and_fallback_to_local(stack: dict[str, str], app_engine: Engine) -> None:
    from pipelines.assistant import assist_messages
    from tests.factories import deliver

    inbox = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    set_tenant_ai(app_engine, inbox, {"provider": "openai", "monthly_budget_usd": 0.0001})
    ids = []
    for n in range(4):
        body = orjson.dumps({"id": f"b{n}", "type": "message", "sent_at": datetime.now(UTC).isoformat(),
                             "text": f"Invoice question {n}", "contact": {"external_id": f"c{n}"}})
        ids += deliver(app_engine, inbox, body, "application/json", headers={"webhook-id": f"w{n}"}).messages_created  # type: ignore[attr-defined]
    answer = json.dumps({"category": "billing", "priority": "normal", "sentiment": "neutral", "sentiment_score": 0,
                         "language": "en", "confidence": 0.8, "reasoning": "Asks about an invoice.", "team": None})
    with openai_stub() as (url, stub):
        stub.default_content = answer
        os.environ.update({"INTAKE_AI_BASE_URL": url, "INTAKE_AI_API_KEY": "sk-test"})
        get_settings.cache_clear()
        try:
            settings = get_settings()
            for message_id in ids:  # 120 + 40 tokens of gpt-4o-mini each: $0.000042 a message
                assist_messages(app_engine, settings, inbox.tenant_id, [message_id])
        finally:
            for key in ("INTAKE_AI_BASE_URL", "INTAKE_AI_API_KEY"):
                os.environ.pop(key)
            get_settings.cache_clear()
    providers = [r[0] for r in rows(app_engine, inbox, "SELECT provider FROM ai_classifications ORDER BY created_at")]
    assert providers[:3] == ["openai", "openai", "openai"] and providers[3] == "local"
    alerts = rows(app_engine, inbox, "SELECT threshold FROM budget_alerts ORDER BY threshold")
    assert alerts == [(80,), (100,)]
    (spent,) = rows(app_engine, inbox, "SELECT sum(cost_usd) FROM ai_usage")[0]
    assert float(spent) == pytest.approx(3 * (120 * 0.15 + 40 * 0.60) / 1e6, rel=1e-6)


def test_a_failing_provider_leaves_ingestion_alone_and_replays_once(
    server: str, app_engine: Engine, admin_engine: Engine
) -> None:
    inbox = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    set_tenant_ai(app_engine, inbox, {"provider": "openai"})
    down = {**WORKER_ENV, "INTAKE_AI_BASE_URL": "http://127.0.0.1:9/v1", "INTAKE_AI_MAX_RETRIES": "0",
            "INTAKE_AI_TIMEOUT_SECONDS": "1"}
    with worker(processes=1, threads=4, env=down):
        for n in range(10):
            post_api(server, inbox, f"down-{n}", f"My order {n} has not arrived", f"p{n}@example.com")
        wait_for(lambda: rows(app_engine, inbox, "SELECT count(*) FROM messages") == [(10,)], timeout=60)

        def dead() -> int:
            with admin_engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM job_failures WHERE tenant_id = :t AND "
                                             "actor = 'assist_messages' AND status = 'dead'"),
                                        {"t": inbox.tenant_id}).scalar_one())
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        # Every AI job has run out of retries: none waiting, none delayed for a retry.
        wait_for(lambda: dead() >= 1 and client.hlen("dramatiq:ai.msgs") + client.hlen("dramatiq:ai.DQ.msgs") == 0,
                 timeout=90)
    assert rows(app_engine, inbox, "SELECT count(*) FROM ai_classifications") == [(0,)]
    with admin_engine.connect() as conn:
        failure = conn.execute(text("SELECT exception_type, exception_message, attempts FROM job_failures "
                                    "WHERE tenant_id = :t"), {"t": inbox.tenant_id}).first()
    assert failure is not None and failure.exception_type == "AIUnavailable" and failure.attempts == 3

    answer = json.dumps({"category": "shipping", "priority": "normal", "sentiment": "negative",
                         "sentiment_score": -0.3, "language": "en", "confidence": 0.8,
                         "reasoning": "A late order.", "team": None})
    with openai_stub() as (url, stub):
        stub.default_content = answer
        with worker(processes=1, threads=4, env={**WORKER_ENV, "INTAKE_AI_BASE_URL": url}):
            replay = subprocess.run([INTAKE, "dlq", "replay", "--all", "--json"], capture_output=True, text=True,
                                    env=dict(os.environ), timeout=60)
            assert replay.returncode == 0, replay.stderr
            assert json.loads(replay.stdout)["replayed"] >= 1
            wait_for(lambda: rows(app_engine, inbox, "SELECT count(*) FROM ai_classifications") == [(10,)], timeout=60)
    assert rows(app_engine, inbox, "SELECT count(DISTINCT message_id), min(provider) FROM ai_classifications") == [
        (10, "openai")]
    with admin_engine.connect() as conn:
        statuses = {r[0] for r in conn.execute(text("SELECT status FROM job_failures WHERE tenant_id = :t"),
                                               {"t": inbox.tenant_id})}
    assert statuses == {"replayed"}


def test_a_refused_provider_request_goes_to_the_ledger_after_one_attempt(
    server: str, app_engine: Engine, admin_engine: Engine
) -> None:
    inbox = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    set_tenant_ai(app_engine, inbox, {"provider": "openai"})
    bad_key = {"error": {"message": "Incorrect API key provided: sk-stale.", "type": "invalid_request_error",
                         "param": None, "code": "invalid_api_key"}}

    def failures() -> list[Any]:
        with admin_engine.connect() as conn:
            return list(conn.execute(text("SELECT exception_type, exception_message, attempts, status "
                                          "FROM job_failures WHERE tenant_id = :t"), {"t": inbox.tenant_id}))

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    with openai_stub() as (url, stub):
        stub.script = [("status", 401, None, bad_key)] * 20
        env = {**WORKER_ENV, "INTAKE_AI_BASE_URL": url, "INTAKE_AI_API_KEY": "sk-stale"}
        with worker(processes=1, threads=4, env=env):
            post_api(server, inbox, "refused-0", "My order has not arrived", "refused@example.com")
            # Recorded, and nothing left waiting or delayed for a retry.
            wait_for(lambda: failures() != [] and
                     client.hlen("dramatiq:ai.msgs") + client.hlen("dramatiq:ai.DQ.msgs") == 0, timeout=60)
        chat = [path for path, _, _ in stub.requests if path.endswith("/chat/completions")]
    ((etype, emessage, attempts, status),) = failures()
    assert (etype, attempts, status) == ("AIRefused", 1, "dead")
    assert "(401)" in emessage and "sk-stale" not in emessage
    assert chat == ["/v1/chat/completions"]  # one call: neither the provider nor the broker asked again
    assert rows(app_engine, inbox, "SELECT count(*) FROM ai_classifications") == [(0,)]


def test_a_message_classified_before_is_drafted_without_being_classified_again(
        stack: dict[str, str], app_engine: Engine) -> None:
    """A job that finds a message classified but not drafted (a repeat after a fault, or drafts turned on since)
    drafts from the stored classification: one classification paid for, not two."""
    from pipelines.assistant import assist_messages
    from tests.factories import deliver

    inbox = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    body = orjson.dumps({"id": "r1", "type": "message", "sent_at": datetime.now(UTC).isoformat(),
                         "text": "I was charged twice this month, how long does a refund take?",
                         "contact": {"external_id": "c1", "name": "Ada"}})
    (message_id,) = deliver(app_engine, inbox, body, "application/json",  # type: ignore[attr-defined]
                            headers={"webhook-id": "w-r1"}).messages_created
    settings = get_settings()
    assert assist_messages(app_engine, settings, inbox.tenant_id, [message_id]) == {"classified": 1, "drafted": 0}
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text("UPDATE inboxes SET settings = settings || '{\"ai_drafts\": true}' WHERE id = :i"),
                     {"i": inbox.id})
    assert assist_messages(app_engine, settings, inbox.tenant_id, [message_id]) == {"classified": 0, "drafted": 1}
    assert assist_messages(app_engine, settings, inbox.tenant_id, [message_id]) == {"classified": 0, "drafted": 0}
    usage = rows(app_engine, inbox, "SELECT feature, count(*) FROM ai_usage GROUP BY feature ORDER BY feature")
    assert usage == [("classify", 1), ("draft", 1)]
    ((category, drafted_for),) = rows(app_engine, inbox, """
        SELECT a.category, d.message_id FROM ai_classifications a JOIN ai_drafts d ON d.message_id = a.message_id""")
    assert (category, drafted_for) == ("billing", message_id)
