"""The local provider on two labelled sets in six languages, written for Intake.

`labelled_messages.tsv` (211 messages) was written alongside the taxonomy; `labelled_chat.tsv` (121 lines)
was written apart from its keywords and examples: chat lines of one to four words, typos, mixed
languages, questions that never name their category. The second set's figures are the honest ones for
chat channels; README ("Classification") quotes both.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from pipelines.ai.base import Classification, ClassifyRequest, DraftRequest, Passage
from pipelines.ai.local import LocalProvider, sentiment
from pipelines.ai.taxonomy import DEFAULT, Category

DATA = Path(__file__).parents[1] / "data" / "labelled_messages.tsv"
CHAT = Path(__file__).parents[1] / "data" / "labelled_chat.tsv"
# Ratchets: floors set at the figures last measured on these sets (README, "Classification"; docs/ai.md), the
# text alone with no channel or conversation. Raise one when a change raises its figure; lower it only with the
# reason written beside it, never to let a change through.
LANGUAGE_RATCHET = 1.0  # labelled_messages: measured 1.000, every message
CATEGORY_RATCHET = 0.91  # labelled_messages: measured 0.919
MACRO_F1_RATCHET = 0.939  # labelled_messages: measured 0.940
CHAT_LANGUAGE_RATCHET = 0.99  # labelled_chat: measured 0.992
CHAT_CATEGORY_RATCHET = 0.33  # labelled_chat: measured 0.339
CHAT_MACRO_F1_RATCHET = 0.35  # labelled_chat: measured 0.353


@pytest.fixture(scope="module")
def predictions() -> list[tuple[dict[str, str], Classification]]:
    provider = LocalProvider()
    with DATA.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(row, provider.classify(ClassifyRequest(row["text"], None, DEFAULT))[0]) for row in rows]


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    labels = {gold for gold, _ in pairs}
    scores = []
    for label in labels:
        tp = sum(1 for g, p in pairs if g == label and p == label)
        fp = sum(1 for g, p in pairs if g != label and p == label)
        fn = sum(1 for g, p in pairs if g == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def test_the_labelled_set_is_broad(predictions: list[tuple[dict[str, str], Classification]]) -> None:
    rows = [row for row, _ in predictions]
    assert len(rows) >= 200
    assert set(Counter(r["language"] for r in rows)) == {"en", "fi", "sv", "de", "es", "fr"}
    assert set(Counter(r["category"] for r in rows)) == {
        "billing", "technical", "shipping", "account", "sales", "complaint", "spam", "auto_reply"}


def test_language_accuracy(predictions: list[tuple[dict[str, str], Classification]]) -> None:
    correct = sum(1 for row, c in predictions if c.language == row["language"])
    accuracy = correct / len(predictions)
    print(f"\nlanguage accuracy {accuracy:.3f} on {len(predictions)} messages")
    assert accuracy >= LANGUAGE_RATCHET


def test_category_accuracy_and_macro_f1(predictions: list[tuple[dict[str, str], Classification]]) -> None:
    pairs = [(row["category"], c.category) for row, c in predictions]
    accuracy = sum(1 for g, p in pairs if g == p) / len(pairs)
    f1 = macro_f1(pairs)
    print(f"\ncategory accuracy {accuracy:.3f}, macro-F1 {f1:.3f} on {len(pairs)} messages")
    assert accuracy >= CATEGORY_RATCHET
    assert f1 >= MACRO_F1_RATCHET


@pytest.fixture(scope="module")
def chat_predictions() -> list[tuple[dict[str, str], Classification]]:
    provider = LocalProvider()
    with CHAT.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(row, provider.classify(ClassifyRequest(row["text"], None, DEFAULT))[0]) for row in rows]


def test_the_chat_set_is_short_and_broad(chat_predictions: list[tuple[dict[str, str], Classification]]) -> None:
    rows = [row for row, _ in chat_predictions]
    assert len(rows) >= 120 and set(r["language"] for r in rows) == {"en", "fi", "sv", "de", "es", "fr"}
    assert sum(1 for r in rows if len(r["text"].split()) <= 4) >= len(rows) / 2


def test_chat_set_figures(chat_predictions: list[tuple[dict[str, str], Classification]]) -> None:
    language = sum(1 for row, c in chat_predictions if c.language == row["language"])
    pairs = [(row["category"], c.category) for row, c in chat_predictions]
    category = sum(1 for g, p in pairs if g == p) / len(pairs)
    f1 = macro_f1(pairs)
    print(f"\nchat set: language {language / len(pairs):.3f}, category {category:.3f}, macro-F1 {f1:.3f}")
    assert language / len(pairs) >= CHAT_LANGUAGE_RATCHET
    assert category >= CHAT_CATEGORY_RATCHET
    assert f1 >= CHAT_MACRO_F1_RATCHET


def test_every_answer_is_explained(predictions: list[tuple[dict[str, str], Classification]]) -> None:
    for _, c in predictions:
        assert 0.0 <= c.confidence <= 1.0
        assert c.reasoning.startswith("Classified as ") and c.reasoning.endswith(".")
        assert c.reasoning.count(".") >= 1 and "language" in c.reasoning


def test_spam_and_auto_replies_are_low_priority(predictions: list[tuple[dict[str, str], Classification]]) -> None:
    for row, c in predictions:
        if c.category in ("spam", "auto_reply"):
            assert c.priority == "low", row


@pytest.mark.parametrize(("text", "language", "label"), [
    ("Thank you so much, that was fast and great!", "en", "positive"),
    ("This is terrible and I am very angry.", "en", "negative"),
    ("Kiitos, loistava palvelu!", "fi", "positive"),
    ("Olen pettynyt, sovellus ei toimi.", "fi", "negative"),
    ("Tack, det fungerar igen!", "sv", "positive"),
    ("Das ist eine Frechheit, ich bin enttäuscht.", "de", "negative"),
    ("Muchas gracias, excelente atención.", "es", "positive"),
    ("Je suis déçu, c'est inacceptable.", "fr", "negative"),
    ("Mon colis est arrivé.", "fr", "neutral"),
])
def test_sentiment(text: str, language: str, label: str) -> None:
    assert sentiment(text, language)[0] == label


def test_urgent_complaints_are_urgent() -> None:
    result, _ = LocalProvider().classify(ClassifyRequest(
        "This is unacceptable, our whole shop is down and I need this fixed immediately!", None, DEFAULT))
    assert result.priority == "urgent" and result.sentiment == "negative"


def test_drafts_speak_the_customers_language_and_cite_what_they_use() -> None:
    provider = LocalProvider()
    passage = Passage("11111111-1111-1111-1111-111111111111", "Refunds", "Refunds take 5 business days.", 0.6)
    reply, _ = provider.draft(DraftRequest("Milloin saan rahani?", "Aino Virtanen", "fi", "billing", (passage,)))
    assert reply.text.startswith("Hei Aino,") and "Refunds take 5 business days." in reply.text
    assert reply.cited_chunk_ids == [passage.chunk_id] and reply.language == "fi"
    empty, _ = provider.draft(DraftRequest("¿Dónde está mi pedido?", None, "es", "shipping", ()))
    assert "No he encontrado" in empty.text and empty.cited_chunk_ids == [] and empty.confidence < 0.5


def test_a_megabyte_message_is_classified_by_its_head() -> None:
    head = "This is terrible, my order never arrived and I want my money back now!"
    result, _ = LocalProvider().classify(ClassifyRequest(head + " x" * 500_000, None, DEFAULT))
    assert (result.language, result.sentiment, result.category) == ("en", "negative", "shipping")


def test_long_taxonomy_keywords_do_not_overflow_the_reasoning() -> None:
    """`taxonomy.from_settings` reads stored settings as they are, whatever wrote them."""
    keywords = tuple(f"{word} " + "z" * 400 for word in ("parcel", "order", "late"))
    category = Category("shipping", "Deliveries", None, keywords)
    text = " ".join(keywords) + " where is it, this is urgent"
    result, _ = LocalProvider().classify(ClassifyRequest(text, None, (category,)))
    assert result.category == "shipping" and len(result.reasoning) <= 1000
    assert result.reasoning.startswith("Classified as shipping (matched 'parcel z")


@pytest.mark.parametrize("name", ["   ", "\u3000", "\t\n"])
def test_a_name_of_spaces_is_greeted_as_no_name(name: str) -> None:
    reply, _ = LocalProvider().draft(DraftRequest("Where is my order?", name, "en", "shipping", ()))
    assert reply.text.startswith("Hi,\n")
