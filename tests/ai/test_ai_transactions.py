"""What an AI job costs the database: transactions and connections per message, by provider.

The local provider answers in-process, so a message's reads and its store share one transaction. A hosted
provider's call may take seconds, so no connection is held and no transaction is open while it runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, Table, event, func, select, text
from sqlalchemy.pool import QueuePool

from config import get_settings
from db.engine import make_engine
from db.schema import ai_classifications, ai_usage
from db.tenancy import bind_tenant
from pipelines import knowledge
from pipelines.ai.local import LocalProvider
from pipelines.assistant import assist_messages
from pipelines.inboxes import CreatedInbox
from pipelines.ingest import IngestResult
from tests.factories import deliver, new_inbox
from tests.openai_server import openai_stub

APP = "intake-tests-ai-transactions"


@pytest.fixture
def engine(stack: dict[str, str]) -> Iterator[Engine]:
    """An engine of this test's own, so that what it counts is this job's alone."""
    engine = make_engine(stack["DATABASE_URL"], prepared_statements=True, application_name=APP)
    yield engine
    engine.dispose()


def messages(engine: Engine, inbox: CreatedInbox, texts: list[str]) -> list[uuid.UUID]:
    """One stored inbound message per text, each from its own contact (so each is its conversation's latest)."""
    ids: list[uuid.UUID] = []
    start = datetime.now(UTC) - timedelta(minutes=5)
    for n, text_ in enumerate(texts):
        body = orjson.dumps({"id": f"t{n}", "type": "message", "sent_at": (start + timedelta(seconds=n)).isoformat(),
                             "text": text_, "contact": {"external_id": f"person-{n}", "name": "Ada Lovelace"}})
        result = deliver(engine, inbox, body, "application/json", headers={"webhook-id": f"t{n}"})
        assert isinstance(result, IngestResult)
        ids += result.messages_created
    return ids


def count(engine: Engine, inbox: CreatedInbox, table: Table) -> int:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_local_job_uses_one_connection_and_one_transaction_per_message(engine: Engine, app_engine: Engine) -> None:
    settings = get_settings()
    inbox = new_inbox(app_engine, "api")

    def conns() -> Iterator[Any]:
        with app_engine.begin() as conn:
            bind_tenant(conn, inbox.tenant_id)
            yield conn
    knowledge.import_path(conns, inbox.tenant_id, Path(__file__).parents[1] / "data" / "kb",
                          LocalProvider(settings.embedding_dim), settings.embedding_dim)
    ids = messages(app_engine, inbox, [
        "Hi, I was charged twice this month. How long does a refund take?",  # read: knowledge for the draft
        "ok",  # read: the evidence of its language
        "Where is my parcel? It was due on Monday and the tracking page has not changed.",
    ])
    checkouts, committed_at_begin, commits = [], [], []
    event.listen(engine.pool, "checkout", lambda *args: checkouts.append(1))
    # Each transaction, as it begins, sees every earlier message's results already committed: a message
    # that fails takes back its own results only.
    event.listen(engine, "begin", lambda conn: committed_at_begin.append(count(app_engine, inbox,
                                                                               ai_classifications)))
    event.listen(engine, "commit", lambda conn: commits.append(1))

    counts = assist_messages(engine, settings, inbox.tenant_id, ids)

    assert counts == {"classified": 3, "drafted": 3}
    assert len(checkouts) == 1
    assert committed_at_begin == [0, 1, 2] and len(commits) == 3
    assert count(app_engine, inbox, ai_usage) == 3 + 3 + 5  # classify and draft each, and a knowledge file each


def test_a_hosted_provider_is_called_with_no_connection_held_and_no_transaction_open(
    engine: Engine, app_engine: Engine, admin_engine: Engine
) -> None:
    inbox = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text("UPDATE tenants SET settings = jsonb_set(settings, '{ai}', '{\"provider\": \"openai\"}')"))
    # "ok" is too short to tell its language: the job reads the evidence around it before the call.
    ids = messages(app_engine, inbox, ["ok", "My order has not arrived and nobody answers my emails."])
    seen: list[tuple[int, int]] = []
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    held = pool.checkedout

    def open_transactions() -> int:
        with admin_engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app "
                                         "AND state LIKE 'idle in transaction%'"), {"app": APP}).scalar_one())

    class Observed(list[Any]):
        """The stub's request log: each request is logged while its caller waits for the answer."""

        def append(self, item: Any) -> None:
            seen.append((held(), open_transactions()))
            super().append(item)

    answer = {"category": "shipping", "priority": "normal", "sentiment": "negative", "sentiment_score": -0.3,
              "language": "en", "confidence": 0.8, "reasoning": "A late order.", "team": None}
    with openai_stub() as (url, stub):
        stub.default_content = json.dumps(answer)
        stub.requests = Observed()
        settings = get_settings().model_copy(update={"ai_base_url": url, "ai_api_key": "sk-test"})
        counts = assist_messages(engine, settings, inbox.tenant_id, ids)

    assert counts == {"classified": 2, "drafted": 0}
    assert seen == [(0, 0), (0, 0)]  # (connections held, transactions open) during each call
