"""Knowledge retrieval that serves every tenant: a held-out question set, and tenants sharing one HNSW index."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import knowledge
from pipelines.ai.base import DraftRequest, Passage
from pipelines.ai.language import decide
from pipelines.ai.local import LocalProvider
from tests.factories import new_inbox

DATA = Path(__file__).parents[1] / "data"
DIM = 384
# Ratchets: floors set at the figures last measured on the 30 held-out questions (README, "Knowledge"). Raise
# one when a change raises its figure; lower it only with the reason written beside it.
FOUND_RATCHET = 22  # recall@3: measured 22 of 30 (0.73)
MRR_RATCHET = 0.588  # mean reciprocal rank: measured 0.5889
CITED_RATCHET = 15  # the right article cited first: measured 15 of 30 (0.50)
# Reading the question in its language against 'simple' (measured 15) and the vectors alone (measured 20): the
# lead measured over the better of the two, 2 questions of 30.
LANGUAGE_LEAD_RATCHET = 2


def import_folder(engine: Engine, tenant: TenantId, folder: Path) -> None:
    def connections() -> Iterator[Connection]:
        with engine.begin() as conn:
            bind_tenant(conn, tenant)
            yield conn

    knowledge.import_path(connections, tenant, folder, LocalProvider(), DIM)


def search(engine: Engine, tenant: TenantId, question: str, *, language: str | None = "en",
           limit: int = 3) -> list[Passage]:
    vector = LocalProvider().embed([question])[0][0]
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return knowledge.retrieve(conn, tenant, question, vector, language=language, limit=limit)


@pytest.fixture(scope="module")
def eval_tenant(app_engine: Engine) -> TenantId:
    tenant = new_inbox(app_engine, "api").tenant_id
    import_folder(app_engine, tenant, DATA / "kb_eval")
    return tenant


def questions() -> list[tuple[str, str]]:
    with (DATA / "kb_eval_questions.tsv").open(encoding="utf-8") as handle:
        return [(row["question"], row["answer"]) for row in csv.DictReader(handle, delimiter="\t")]


def test_held_out_questions_find_and_cite_the_right_article(app_engine: Engine, eval_tenant: TenantId) -> None:
    """Ten articles, 30 questions phrased unlike them (and two that nothing answers): recall@3, MRR, citations."""
    answerable = [(q, a) for q, a in questions() if a]
    assert len(answerable) >= 30
    found = reciprocal = cited = 0.0
    provider = LocalProvider()
    for question, answer in answerable:
        passages = search(app_engine, eval_tenant, question)
        headings = [p.heading for p in passages]
        found += answer in headings
        reciprocal += 1 / (headings.index(answer) + 1) if answer in headings else 0
        draft, _ = provider.draft(DraftRequest(question, None, "en", "other", tuple(passages)))
        first = next((p.heading for p in passages if p.chunk_id in draft.cited_chunk_ids[:1]), None)
        cited += first == answer
    n = len(answerable)
    print(f"\nrecall@3 {found / n:.2f}, MRR {reciprocal / n:.2f}, right citation {cited / n:.2f} ({n} questions)")
    assert found >= FOUND_RATCHET
    assert reciprocal / n >= MRR_RATCHET
    assert cited >= CITED_RATCHET
    for question, answer in questions():
        if not answer:
            draft, _ = provider.draft(DraftRequest(question, None, "en", "other",
                                                   tuple(search(app_engine, eval_tenant, question))))
            assert draft.cited_chunk_ids == [] and "could not find" in draft.text, question


def recall_at_3(engine: Engine, tenant: TenantId, *, language: str | None, full_text: bool = True) -> int:
    found = 0
    for question, answer in questions():
        if answer:
            vector = LocalProvider().embed([question])[0][0]
            with engine.begin() as conn:
                bind_tenant(conn, tenant)
                passages = knowledge.retrieve(conn, tenant, question if full_text else "", vector, language=language,
                                              limit=3)
            found += answer in [p.heading for p in passages]
    return found


def test_reading_the_question_in_its_language_beats_simple_and_the_vectors_alone(
        app_engine: Engine, eval_tenant: TenantId) -> None:
    """README ("Figures"): recall@3 0.73 in the question's language, 0.50 in 'simple', 0.67 by vectors alone."""
    in_english = recall_at_3(app_engine, eval_tenant, language="en")
    in_simple = recall_at_3(app_engine, eval_tenant, language=None)
    vectors_alone = recall_at_3(app_engine, eval_tenant, language="en", full_text=False)
    print(f"\nrecall@3 of 30: {in_english} in English, {in_simple} in 'simple', {vectors_alone} by vectors alone")
    assert in_english >= FOUND_RATCHET and in_english >= max(in_simple, vectors_alone) + LANGUAGE_LEAD_RATCHET


def test_the_question_language_drops_its_stop_words(app_engine: Engine, eval_tenant: TenantId) -> None:
    # Only stop words: nothing matches on "the", "can" or "is" any more.
    with app_engine.begin() as conn:
        bind_tenant(conn, eval_tenant)
        vector = [0.0] * (DIM - 1) + [1.0]
        assert knowledge.retrieve(conn, eval_tenant, "can the is it", vector, language="en", pool=5,
                                  limit=50) == knowledge.retrieve(conn, eval_tenant, "", vector, pool=5, limit=50)


@pytest.mark.parametrize("question", ["\x00" * 10, "refund " * 50_000, "\ud800 refund \U0001f600", "'|&!:*()",
                                      "C:\\refund\\'x' E'refund' $$refund$$ <-> !refund:*B", "refund\u202e\u200b" * 300])
def test_hostile_questions_are_searched_without_error(app_engine: Engine, eval_tenant: TenantId,
                                                      question: str) -> None:
    passages = search(app_engine, eval_tenant, question)
    assert len(passages) == 3  # the vector half always fills the top 3 of a tenant with more chunks than that
    if "refund" in question:  # its words still count
        assert any(p.heading.startswith("Refunds") for p in passages), [p.heading for p in passages]


# -- tenants sharing the index ---------------------------------------------------------------------

QUESTIONS = 10
NEAR_BIG = 300  # per question, chunks of the large tenant closer to it than the small tenant's answer


def _vector(rng: random.Random, around: list[float] | None = None, spread: float = 0.0) -> list[float]:
    if around is None:
        return [rng.uniform(-0.5, 0.5) for _ in range(DIM)]
    return [x + rng.gauss(0, spread) for x in around]


def _literal(vector: list[float]) -> str:
    return "[" + ",".join(f"{x:.4f}" for x in vector) + "]"


@pytest.fixture(scope="module")
def shared_index(admin_engine: Engine, app_engine: Engine) -> dict[str, object]:
    """A tenant of 100,000 chunks and one of 2,000 in one HNSW index, vectors written straight into the table.

    For each question the large tenant holds 300 chunks closer to it than the small tenant's right answer
    (its content is much like the small tenant's), so the index's candidates are all the large tenant's:
    a search filtered by tenant after the index scan finds none of the small tenant's rows. The large
    tenant's other 97,000 chunks repeat 1,000 random vectors (pgvector keeps duplicates in one graph
    element, so the index builds in seconds rather than minutes).
    """
    rng = random.Random(14)
    big, small = (new_inbox(app_engine, "api").tenant_id for _ in range(2))
    queries = [_vector(rng) for _ in range(QUESTIONS)]
    near = [(q, _literal(_vector(rng, queries[q], 0.1))) for q in range(QUESTIONS) for _ in range(NEAR_BIG)]
    answers = [_literal(_vector(rng, query, 0.2)) for query in queries]
    with admin_engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        conn.execute(text("DROP INDEX knowledge_chunks_embedding_idx"))  # built again below, at once
        documents = {tenant: conn.execute(text(
            "INSERT INTO knowledge_documents (tenant_id, source, title, content_hash, embedding_model, embedding_dim)"
            " VALUES (:t, 'bulk', 'Bulk', '-', 'test', :dim) RETURNING id"), {"t": tenant, "dim": DIM}).scalar_one()
            for tenant in (big, small)}
        conn.execute(text("""
            INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, embedding_model)
            SELECT :t, :d, g, 'filler', 'filler', base.v, 'test'
            FROM generate_series(0, :n - 1) AS g
            JOIN (SELECT i, (SELECT CAST(array_agg(random() - 0.5) AS vector) FROM generate_series(1, :dim)
                             WHERE i >= 0) AS v
                  FROM generate_series(0, 999) AS i) AS base ON base.i = g % 1000"""),
            {"t": big, "d": documents[big], "n": 100_000 - len(near), "dim": DIM})
        conn.execute(text("""
            INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, embedding_model)
            SELECT :t, :d, :offset + o, 'near ' || q, 'near', CAST(v AS vector), 'test'
            FROM unnest(CAST(:q AS int[]), CAST(:v AS text[])) WITH ORDINALITY AS u(q, v, o)"""),
            {"t": big, "d": documents[big], "offset": 100_000, "q": [q for q, _ in near], "v": [v for _, v in near]})
        conn.execute(text("""
            INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, embedding_model)
            SELECT :t, :d, g, 'filler', 'filler',
                   (SELECT CAST(array_agg(random() - 0.5) AS vector) FROM generate_series(1, :dim) WHERE g >= 0),
                   'test'
            FROM generate_series(1, 2000 - :answers) AS g"""),
            {"t": small, "d": documents[small], "dim": DIM, "answers": QUESTIONS})
        conn.execute(text("""
            INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, embedding_model)
            SELECT :t, :d, 10000 + o, 'answer ' || (o - 1), 'answer', CAST(v AS vector), 'test'
            FROM unnest(CAST(:v AS text[])) WITH ORDINALITY AS u(v, o)"""),
            {"t": small, "d": documents[small], "v": answers})
        conn.execute(text("CREATE INDEX knowledge_chunks_embedding_idx ON knowledge_chunks "
                          "USING hnsw (embedding vector_cosine_ops)"))
        conn.execute(text("ANALYZE knowledge_chunks"))
    tiny = new_inbox(app_engine, "api").tenant_id
    import_folder(app_engine, tiny, DATA / "kb")
    return {"big": big, "small": small, "tiny": tiny, "queries": queries}


def _top(engine: Engine, tenant: TenantId, vector: list[float], settings: tuple[str, ...] = (),
         exact_below: int = knowledge.EXACT_BELOW) -> list[str]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        for setting in settings:
            conn.execute(text(f"SET LOCAL {setting}"))
        return [p.heading for p in knowledge.retrieve(conn, tenant, "", vector, limit=3, exact_below=exact_below)]


PLANS = {
    "default": (),
    "indexes preferred": ("enable_seqscan = off", "enable_bitmapscan = off", "enable_sort = off"),
    "generic plans": ("plan_cache_mode = force_generic_plan",),
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_a_small_tenant_beside_a_large_one_finds_its_own_answers(app_engine: Engine, shared_index: dict[str, object],
                                                                 plan: str) -> None:
    queries: list[list[float]] = shared_index["queries"]  # type: ignore[assignment]
    small: TenantId = shared_index["small"]  # type: ignore[assignment]
    hits = sum(f"answer {i}" in _top(app_engine, small, q, PLANS[plan]) for _ in range(2)
               for i, q in enumerate(queries)) / 2
    print(f"\n{plan}: {hits:.0f}/{QUESTIONS} right answers in the top 3")
    assert hits == QUESTIONS  # an exact search: README's "10 of 10"


def test_the_index_path_falls_back_to_an_exact_search_when_starved(app_engine: Engine,
                                                                   shared_index: dict[str, object]) -> None:
    queries: list[list[float]] = shared_index["queries"]  # type: ignore[assignment]
    small: TenantId = shared_index["small"]  # type: ignore[assignment]
    for i, query in enumerate(queries):
        with app_engine.begin() as conn:  # what the shared index alone gives the small tenant: not its answer
            bind_tenant(conn, small)
            for setting in (*PLANS["indexes preferred"], "hnsw.ef_search = 200"):
                conn.execute(text(f"SET LOCAL {setting}"))
            starved = [r.id for r in conn.execute(knowledge.NEAREST_INDEXED,
                                                  {"t": small, "q": _literal(query), "pool": 40})]
            headings = conn.execute(text("SELECT heading FROM knowledge_chunks WHERE id = ANY(:ids)"),
                                    {"ids": starved}).scalars().all()
        assert len(starved) < 40 and f"answer {i}" not in headings
    hits = sum(f"answer {i}" in _top(app_engine, small, q, PLANS["indexes preferred"], exact_below=1)
               for i, q in enumerate(queries))
    assert hits == QUESTIONS


def test_the_large_tenant_still_uses_the_index_and_finds_its_nearest(app_engine: Engine,
                                                                     shared_index: dict[str, object]) -> None:
    queries: list[list[float]] = shared_index["queries"]  # type: ignore[assignment]
    big: TenantId = shared_index["big"]  # type: ignore[assignment]
    for i, query in enumerate(queries):
        assert _top(app_engine, big, query) == [f"near {i}"] * 3
    with app_engine.begin() as conn:
        bind_tenant(conn, big)
        plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + knowledge.NEAREST_INDEXED.text),
                                                          {"t": big, "q": _literal(queries[0]), "pool": 40}))
    assert "knowledge_chunks_embedding_idx" in plan


def test_a_five_article_tenant_beside_them(app_engine: Engine, shared_index: dict[str, object]) -> None:
    tiny: TenantId = shared_index["tiny"]  # type: ignore[assignment]
    asked = [("How long does it take to get my refund?", "Refunds and billing > How long does a refund take?"),
             ("I see two charges on my card for the same month", "Refunds and billing > Charged twice"),
             ("My tracking link shows nothing", "Shipping and delivery > Tracking your parcel"),
             ("How do I delete my account and personal data?", "Your account > Deleting your account"),
             ("Kuinka kauan hyvityksen maksaminen kestää?", "Palautukset ja hyvitykset > Hyvityksen kesto")]
    hits = sum(answer in [p.heading for p in search(app_engine, tiny, q, language=decide(q).language)]
               for q, answer in asked)
    assert hits >= 4
