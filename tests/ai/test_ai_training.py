"""A classifier trained per tenant: on demand (`intake ai train`, `POST .../ai/train`) and in the background
(a debounced job on the `ai` queue, run by a real worker), stored by version in `ai_models`, used by the local
provider with the version named in `ai_classifications.model`; a tenant without examples keeps the rules.
BANKING77's floor (a subsample, cross-validated) is pinned here."""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy import Engine, event, text

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.ai import examples, learned, semantic, taxonomy, training
from pipelines.assistant import assist_messages
from tests.admin_server import client, make_key
from tests.factories import deliver, new_inbox
from tests.processes import run_intake, wait_for, worker
from workers.training import pending_key, schedule

BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"
# Ratchets: BANKING77's floor (see test_banking77_floor), a little under the mean measured over three draws;
# raise them when the classifier gets better, never lower them to let a change through.
BANKING77_SEMANTIC_RATCHET = 0.83  # with the semantic features: measured 0.853 (0.805, 0.91, 0.845)
BANKING77_LEXICAL_RATCHET = 0.79  # lexical only: measured 0.818 (0.75, 0.87, 0.835)
if not BANKING77.exists():  # the worktree's shared folder, or the one beside the repository
    BANKING77 = Path("/work/shared/data/banking77/train.csv")

# Labels a tenant's agents use that the default taxonomy's keywords know nothing of.
TEACHING = {
    "billing": ["my card got charged two times", "refund the double charge please", "why was I billed twice",
                "the charge on my statement is wrong", "I need my money back for the duplicate charge"],
    "shipping": ["the courier never came", "parcel stuck in the depot", "the box has not shown up",
                 "delivery van missed my house", "my package is lost in transit"],
    "account": ["cannot sign in to my profile", "change the email on my login", "lock my user, it was hacked",
                "my login keeps getting rejected", "reset my sign in details"],
}


# What a model trained here is: lexical and semantic with the `semantic` extra installed (make test installs it).
KIND = learned.SEMANTIC if semantic.available() else learned.LEXICAL


def teach(engine: Engine, tenant: uuid.UUID) -> None:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        given = [examples.Example(t, c, i) for i, (c, ts) in enumerate(TEACHING.items()) for t in ts]
        examples.import_examples(conn, TenantId(tenant), given, create_categories=False, actor=audit.Actor("tests"))


def classify(engine: Engine, inbox: Any, words: str) -> dict[str, Any]:
    msg_id = uuid.uuid4().hex
    body = orjson.dumps({"id": msg_id, "type": "message", "sent_at": datetime.now(UTC).isoformat(), "text": words,
                         "contact": {"email": f"{msg_id}@example.com"}})
    deliver(engine, inbox, body, "application/json", headers={"webhook-id": msg_id})
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        message = conn.execute(text("SELECT id FROM messages WHERE external_id = :e"), {"e": msg_id}).scalar_one()
    assist_messages(engine, get_settings(), inbox.tenant_id, [message])
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        row = conn.execute(text("SELECT category, model, reasoning FROM ai_classifications WHERE message_id = :m"),
                           {"m": message}).mappings().one()
    return dict(row)


def intake(*args: str) -> Any:
    result = run_intake(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_model_round_trips_as_plain_arrays() -> None:
    rows = [(t, c) for c, ts in TEACHING.items() for t in ts]
    trained = learned.train(rows)
    assert trained is not None and trained.categories == 3 and trained.examples == 15
    assert trained.accuracy is not None and 0 <= trained.accuracy <= 1
    again = learned.TenantModel.from_bytes(trained.model.to_bytes())
    for words in ("they charged me twice", "the parcel is lost", "I cannot sign in"):
        assert again.predict(words)[0] == trained.model.predict(words)[0]
    assert again.predict("they charged me twice")[0] == "billing"
    if semantic.available():  # Finnish and Swedish are decided by the lexical model trained beside the joint one
        assert trained.model.lexical is not None and again.lexical is not None
        for words in ("veloititte kahdesti", "paketti ei tullut", "en pääse kirjautumaan"):
            for language in ("fi", "sv"):
                assert again.predict(words, language=language) == again.lexical.predict(words)
            assert again.predict(words, language="en") != again.lexical.predict(words)  # the joint model's
    assert learned.train([("only one", "billing"), ("category here", "billing")]) is None
    lexical = learned.train(rows, use_semantic=False)
    assert lexical is not None and lexical.model.format == learned.LEXICAL
    assert learned.TenantModel.from_bytes(lexical.model.to_bytes()).predict("the parcel is lost")[0] == "shipping"
    with pytest.raises(ValueError, match="pickled"):
        learned.TenantModel.from_bytes(b"\x80\x04K\x01.")  # a pickle is never loaded


def test_trained_on_demand_and_used_with_its_version(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Learns on demand")
    tenant = str(inbox.tenant_id)
    before = classify(app_engine, inbox, "the courier never came to my street")
    assert before["model"] == "local-lexical-v1"  # no examples: today's rules

    assert intake("ai", "train", "--tenant", tenant)["version"] is None  # nothing of its own to learn from
    teach(app_engine, inbox.tenant_id)
    first = intake("ai", "train", "--tenant", tenant)
    taught = 15 + sum(len(c.examples) for c in taxonomy.DEFAULT)  # its own and its taxonomy's
    assert (first["version"], first["examples"], first["model"]) == (1, taught, f"{KIND}-v1")
    assert first["categories"] == len(taxonomy.DEFAULT) and first["accuracy"] is not None

    after = classify(app_engine, inbox, "the delivery van never came to my street")
    assert (after["category"], after["model"]) == ("shipping", f"{KIND}-v1")
    assert f"trained model {KIND}-v1" in after["reasoning"]

    # A new version is picked up by the process holding the old one, and old versions are pruned.
    for expected in (2, 3, 4):
        assert intake("ai", "train", "--tenant", tenant)["version"] == expected
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        versions = [r[0] for r in conn.execute(text("SELECT version FROM ai_models ORDER BY version"))]
        loaded = training.latest(conn, TenantId(inbox.tenant_id))
    assert versions == [2, 3, 4] and loaded is not None and loaded.version == 4
    assert classify(app_engine, inbox, "refund the double charge")["model"] == f"{KIND}-v4"

    # Every example gone: the model goes too, and the rules classify again.
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        examples.delete_examples(conn, TenantId(inbox.tenant_id), examples.ExampleFilter(source="import"),
                                 actor=audit.Actor("tests"))
    assert intake("ai", "train", "--tenant", tenant)["version"] is None
    assert classify(app_engine, inbox, "my package is lost")["model"] == "local-lexical-v1"


def test_a_model_this_process_cannot_read_is_read_once_per_version(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Model from a newer release")
    tenant = TenantId(inbox.tenant_id)
    store = text("INSERT INTO ai_models (tenant_id, version, format, model) VALUES (:t, :v, :f, :m)")
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT model FROM ai_models"):
            reads.append(statement)

    event.listen(app_engine, "before_cursor_execute", count)
    try:
        with app_engine.begin() as conn:
            bind_tenant(conn, inbox.tenant_id)
            conn.execute(store, {"t": tenant, "v": 1, "f": "from-the-future", "m": b"not a model this reads"})
        for _ in range(5):  # five messages: the bytes are read and found unreadable once
            with app_engine.begin() as conn:
                bind_tenant(conn, inbox.tenant_id)
                assert training.latest(conn, tenant) is None
        assert len(reads) == 1
        assert classify(app_engine, inbox, "the parcel is lost")["model"] == "local-lexical-v1"  # the rules

        trained = learned.train([(t, c) for c, ts in TEACHING.items() for t in ts])
        assert trained is not None
        with app_engine.begin() as conn:  # a newer version, readable: tried, and used
            bind_tenant(conn, inbox.tenant_id)
            conn.execute(store, {"t": tenant, "v": 2, "f": trained.model.format, "m": trained.model.to_bytes()})
            loaded = training.latest(conn, tenant)
        assert loaded is not None and loaded.version == 2 and len(reads) == 2
    finally:
        event.remove(app_engine, "before_cursor_execute", count)


def test_trained_in_the_background_once_per_burst(app_engine: Engine, redis_client: redis.Redis) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Learns in the background")
    teach(app_engine, inbox.tenant_id)
    assert schedule(redis_client, inbox.tenant_id, 1.0) is True
    assert schedule(redis_client, inbox.tenant_id, 1.0) is False  # coalesced with the one waiting

    def versions() -> list[int]:
        with app_engine.begin() as conn:
            bind_tenant(conn, inbox.tenant_id)
            return [r[0] for r in conn.execute(text("SELECT version FROM ai_models ORDER BY version"))]

    with worker(processes=1, threads=2, queues=("ai",)):
        wait_for(lambda: versions() == [1], timeout=120)
        assert redis_client.get(pending_key(inbox.tenant_id)) is None  # the next change schedules again
        assert schedule(redis_client, inbox.tenant_id, 0.2) is True
        wait_for(lambda: versions() == [1, 2], timeout=120)


def test_train_and_show_over_the_api(base: str, admin_engine: Engine, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Learns over the API")
    key = make_key(admin_engine, tenant_id=inbox.tenant_id, name="trainer")
    with client(base, key) as http:
        path = f"/v1/admin/tenants/{inbox.tenant_id}/ai"
        assert http.get(f"{path}/model").status_code == 404
        teach(app_engine, inbox.tenant_id)
        trained = http.post(f"{path}/train")
        assert trained.status_code == 200, trained.text
        assert trained.json()["version"] == 1 and trained.json()["categories"] == 8
        assert http.get(f"{path}/model").json()["model"] == f"{KIND}-v1"
        other = new_inbox(app_engine, "api", tenant_name="Someone else")
        assert http.post(f"/v1/admin/tenants/{other.tenant_id}/ai/train").status_code == 404  # another tenant: as an id of nothing
        assert http.post(f"{path}/train", content=b"\x00" * 10).status_code in (200, 400)  # no body is read
    with httpx.Client(base_url=base) as anonymous:
        assert anonymous.post(f"/v1/admin/tenants/{inbox.tenant_id}/ai/train").status_code == 401


def _banking77(intents: int, per_intent: int, seed: int) -> list[tuple[str, str]]:
    by: dict[str, list[str]] = defaultdict(list)
    with BANKING77.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by[row["category"]].append(row["text"])
    rnd = random.Random(seed)
    return [(t, i) for i in rnd.sample(sorted(by), intents) for t in rnd.sample(by[i], per_intent)]


@pytest.mark.skipif(not BANKING77.exists(), reason="BANKING77 (CC BY 4.0, PolyAI) is not beside the repository")
def test_banking77_floor() -> None:
    """A ratchet: 10 examples of each of 20 intents, 5-fold cross-validated, three draws. Measured 0.853
    (0.805, 0.91, 0.845) with the semantic features, 0.818 (0.75, 0.87, 0.835) lexical only; raise the floors
    when the classifier gets better, never lower them."""
    scores = []
    for seed in range(3):
        rows = _banking77(20, 10, seed)
        texts = [t for t, _ in rows]
        embedded = semantic.encode(texts) if semantic.available() else None
        accuracy = learned.cross_validated(texts, [c for _, c in rows], folds=5, seed=seed, embedded=embedded)
        assert accuracy is not None
        scores.append(accuracy)
    floor = BANKING77_SEMANTIC_RATCHET if semantic.available() else BANKING77_LEXICAL_RATCHET
    assert sum(scores) / len(scores) >= floor, scores
