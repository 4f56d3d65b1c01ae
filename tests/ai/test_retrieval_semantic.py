"""Retrieval that cites the passage that answers, in six languages: the offline semantic ranking beside the
lexical ones, measured on the held-out questions and on a second set written apart from its articles.

`tests/data/kb_eval_multi_questions.tsv`: 68 questions in English, Finnish, Swedish, German, Spanish and French
over 20 articles (the ten English ones of `kb_eval` and two more in each other language, `kb_eval_multi`).
The floors below are ratchets: set at the measured figures (README, "Knowledge retrieval"), raised when a
change raises them, never lowered to let a change through.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine

from db.tenancy import TenantId, bind_tenant
from pipelines import knowledge
from pipelines.ai import semantic
from pipelines.ai.base import DraftRequest
from pipelines.ai.local import LocalProvider
from tests.factories import new_inbox

pytestmark = pytest.mark.skipif(not semantic.available(), reason="the `semantic` extra is not installed")
DATA = Path(__file__).parents[1] / "data"
DIM = 384
# Ratchets (see above): the measured figures of the held-out questions (30) and of those written apart (68).
HELD_OUT_FOUND_RATCHET = 26  # recall@3: measured 0.87
HELD_OUT_MRR_RATCHET = 0.83  # mean reciprocal rank: measured 0.83
HELD_OUT_CITED_RATCHET = 23  # the right article cited: measured 0.77
APART_FOUND_RATCHET = 66  # recall@3: measured 0.97
APART_MRR_RATCHET = 0.85  # mean reciprocal rank: measured 0.85
APART_CITED_RATCHET = 51  # the right article cited: measured 0.75 (the goal is 0.90: not reached)


@dataclass
class Figures:
    questions: int = 0
    found: int = 0  # the answer among the first three passages
    reciprocal: float = 0.0
    cited: int = 0  # the draft's first citation is the answer

    def add(self, headings: list[str], first_cited: str | None, answer: str) -> None:
        self.questions += 1
        self.found += answer in headings[:3]
        self.reciprocal += 1 / (headings.index(answer) + 1) if answer in headings else 0.0
        self.cited += first_cited == answer

    def __str__(self) -> str:
        n = max(1, self.questions)
        return (f"recall@3 {self.found / n:.2f}, MRR {self.reciprocal / n:.4f}, right citation {self.cited / n:.2f} "
                f"({self.questions})")


@pytest.fixture(scope="module")
def tenant(app_engine: Engine) -> TenantId:
    tenant = new_inbox(app_engine, "api").tenant_id

    def connections() -> Iterator[Connection]:
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            yield conn

    for folder in ("kb_eval", "kb_eval_multi"):
        knowledge.import_path(connections, tenant, DATA / folder, LocalProvider(), DIM)
    return tenant


def held_out() -> list[tuple[str, str, str]]:
    with (DATA / "kb_eval_questions.tsv").open(encoding="utf-8") as handle:
        return [("en", row["question"], row["answer"]) for row in csv.DictReader(handle, delimiter="\t")]


def written_apart() -> list[tuple[str, str, str]]:
    with (DATA / "kb_eval_multi_questions.tsv").open(encoding="utf-8") as handle:
        return [(row["language"], row["question"], row["answer"]) for row in csv.DictReader(handle, delimiter="\t")]


def measure(engine: Engine, tenant: TenantId, questions: list[tuple[str, str, str]], *,
            with_meaning: bool = True) -> dict[str, Figures]:
    """Figures per language and overall ("all"), drafting as the local provider does."""
    provider = LocalProvider()
    figures: dict[str, Figures] = {"all": Figures()}
    for language, question, answer in questions:
        if not answer:
            continue
        vector = provider.embed([question])[0][0]
        meaning = semantic.encode([question])[0] if with_meaning else None
        with engine.begin() as conn:
            bind_tenant(conn, tenant)
            passages = knowledge.retrieve(conn, tenant, question, vector, language=language, meaning=meaning)
        draft, _ = provider.draft(DraftRequest(question, None, language, "other", tuple(passages)))
        first = next((p.heading for p in passages if p.chunk_id in draft.cited_chunk_ids[:1]), None)
        for key in ("all", language):
            figures.setdefault(key, Figures()).add([p.heading for p in passages], first, answer)
    return figures


def report(title: str, figures: dict[str, Figures]) -> None:
    print(f"\n{title}: " + "; ".join(f"{k} {v}" for k, v in figures.items()))


def test_held_out_questions_with_the_meaning(app_engine: Engine, tenant: TenantId) -> None:
    """The 30 held-out English questions, now among 20 articles: ratchets at the measured figures."""
    figures = measure(app_engine, tenant, held_out())
    lexical = measure(app_engine, tenant, held_out(), with_meaning=False)
    report("held out", figures)
    report("held out, lexical alone", lexical)
    overall = figures["all"]
    assert overall.questions == 30
    assert overall.found >= HELD_OUT_FOUND_RATCHET
    assert overall.reciprocal / overall.questions >= HELD_OUT_MRR_RATCHET
    assert overall.cited >= HELD_OUT_CITED_RATCHET
    assert overall.cited > lexical["all"].cited and overall.found >= lexical["all"].found


def test_questions_written_apart_in_six_languages(app_engine: Engine, tenant: TenantId) -> None:
    questions = written_apart()
    assert len(questions) >= 60 and len({q[2].split(" > ")[0] for q in questions}) >= 20
    assert {q[0] for q in questions} == {"en", "fi", "sv", "de", "es", "fr"}
    figures = measure(app_engine, tenant, questions)
    lexical = measure(app_engine, tenant, questions, with_meaning=False)
    report("written apart", figures)
    report("written apart, lexical alone", lexical)
    overall = figures["all"]
    assert overall.found >= APART_FOUND_RATCHET
    assert overall.reciprocal / overall.questions >= APART_MRR_RATCHET
    assert overall.cited >= APART_CITED_RATCHET
    assert overall.cited > lexical["all"].cited
    for language in ("en", "fi", "sv", "de", "es", "fr"):  # the meaning never costs a language its lexical figures
        assert figures[language].found >= lexical[language].found, language


def test_questions_nothing_answers_still_get_the_plain_draft(app_engine: Engine, tenant: TenantId) -> None:
    provider = LocalProvider()
    for question in [q for _, q, a in held_out() if not a]:
        vector = provider.embed([question])[0][0]
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            passages = knowledge.retrieve(conn, tenant, question, vector, language="en",
                                          meaning=semantic.encode([question])[0])
        draft, _ = provider.draft(DraftRequest(question, None, "en", "other", tuple(passages)))
        assert draft.cited_chunk_ids == [] and "could not find" in draft.text, (question, passages[:1])


@pytest.mark.parametrize("question", ["\x00" * 10, "refund " * 50_000, "\ud800 refund \U0001f600", "'|&!:*()", "",
                                      "refund\u202e\u200b" * 300, "\u0301" * 1000])
def test_hostile_questions_are_understood_without_error(app_engine: Engine, tenant: TenantId, question: str) -> None:
    vector = LocalProvider().embed([question])[0][0]
    meaning = semantic.encode([question])[0]
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        passages = knowledge.retrieve(conn, tenant, question, vector, language="en", meaning=meaning, limit=3)
    assert len(passages) == 3  # the semantic half always fills the top 3 of a tenant with more chunks than that
    if "refund" in question:
        assert any(p.heading.startswith("Refunds") for p in passages), [p.heading for p in passages]
