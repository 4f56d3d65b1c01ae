"""The local provider: offline, no API key, no network.

- language: decided by `language.decide` from the text and, when it is short or unsure, the evidence
  around it (channel hint, conversation, contact, tenant default);
- sentiment: VADER for English, the lexicons in `lexicons` for the others;
- category: the tenant's trained classifier when it has one (`pipelines.ai.training`, named in `model`),
  else keyword cues plus n-gram similarity to the category's examples and description;
- priority: urgency words, strong negative sentiment, complaints; spam and auto-replies are low;
- drafts: a reply in the customer's language that quotes and cites the best knowledge passage, and says
  plainly when no passage scored above `RELEVANT`.
Every answer carries a confidence and a one-sentence reasoning naming its evidence.
"""

from __future__ import annotations

import math
import threading
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from db.schema import DEFAULT_EMBEDDING_DIM
from pipelines.ai import embedding, lexicons, libraries
from pipelines.ai.base import (
    Classification,
    ClassifyRequest,
    DraftReply,
    DraftRequest,
    Usage,
)
from pipelines.ai.language import decide as language_of
from pipelines.ai.taxonomy import Category

if TYPE_CHECKING:  # the local-ai extra's, imported where classification uses them
    import numpy as np
    import numpy.typing as npt

MODEL = "local-lexical-v1"
# A passage scoring below this (cosine similarity, plus 0.15 when its words matched) answers nothing: on the
# held-out questions (tests/data/kb_eval_questions.tsv) the questions nothing answers scored 0.23 and 0.24,
# the answerable ones 0.25 to 0.56. Below it the draft says plainly that the articles do not answer.
RELEVANT = 0.25
SECOND = 0.85  # of the first passage's score, from which the second is quoted and cited as well
# Of a message (subject and text) that classification reads: VADER's time grows with the square of a text
# that carries sentiment (10 KB 0.4 s, 100 KB 29 s), and a stranger's email may be megabytes long.
READ_CHARS = 4_000
REASONING_CHARS = 1_000  # Classification.reasoning's limit: long taxonomy keywords must not fail the job
_EXAMPLE_DIM = 512
_lock = threading.Lock()
_vader: Any = None


def _vader_analyzer() -> Any:
    global _vader
    with _lock:
        if _vader is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            _vader = SentimentIntensityAnalyzer()
        return _vader


def _padded(text: str) -> str:
    return " " + embedding.normalise(text) + " "


@lru_cache(maxsize=4096)
def _cue_words(cue: str) -> str:
    """A cue as `_cues` looks for it; the same few hundred cues are looked for in every message."""
    return " " + embedding.normalise(cue)


def _cues(padded: str, cues: tuple[str, ...]) -> list[str]:
    return [cue for cue in cues if _cue_words(cue) in padded]


def sentiment(text: str, language: str) -> tuple[str, float, list[str]]:
    """(label, score in [-1, 1], evidence words)."""
    if language == "en":
        score = float(_vader_analyzer().polarity_scores(text)["compound"])
        evidence: list[str] = []
    else:
        padded = _padded(text)
        words = padded.split()
        negations = set(lexicons.NEGATIONS.get(language, ()))
        total, evidence = 0.0, []
        for polarity, cues in ((1.0, lexicons.POSITIVE.get(language, ())), (-1.0, lexicons.NEGATIVE.get(language, ()))):
            for cue in _cues(padded, cues):
                first = embedding.normalise(cue).split()[0]
                index = next((i for i, w in enumerate(words) if w.startswith(first)), 0)
                flipped = any(w in negations for w in words[max(0, index - 2):index]) and " " not in cue.strip()
                total += -polarity if flipped else polarity
                evidence.append(cue.strip())
        score = max(-1.0, min(1.0, total / math.sqrt(len(evidence) + 1)))
    label = "positive" if score >= 0.05 else "negative" if score <= -0.05 else "neutral"
    return label, score, evidence


@lru_cache(maxsize=64)
def _example_vectors(categories: tuple[Category, ...]) -> tuple[npt.NDArray[np.float64], tuple[slice, ...]]:
    """Every category's description and examples embedded, one row each, and each category's rows."""
    import numpy as np

    rows: list[list[float]] = []
    spans = []
    for category in categories:
        texts = [t for t in (category.description, *category.examples) if t]
        spans.append(slice(len(rows), len(rows) + len(texts)))
        rows += [embedding.embed(t, _EXAMPLE_DIM) for t in texts]
    return np.array(rows, dtype=np.float64).reshape(-1, _EXAMPLE_DIM), tuple(spans)


def score_categories(text: str, categories: tuple[Category, ...]) -> list[tuple[float, Category, list[str], float]]:
    padded = _padded(text)
    rows, spans = _example_vectors(categories)
    similarities = embedding.similarities(embedding.embed(text, _EXAMPLE_DIM), rows).tolist()
    scored = []
    for category, span in zip(categories, spans, strict=True):
        hits = _cues(padded, category.keywords)
        similarity = max(similarities[span], default=0.0)
        scored.append((len(hits) + 3.0 * max(0.0, similarity - 0.1), category, hits, similarity))
    scored.sort(key=lambda item: item[0], reverse=True)
    return scored


class LocalProvider:
    name = "local"
    model = MODEL
    embedding_model = embedding.MODEL

    def __init__(self, embedding_dim: int = DEFAULT_EMBEDDING_DIM) -> None:
        self.embedding_dim = embedding_dim  # INTAKE_EMBEDDING_DIM: as wide as the database's column

    def classify(self, request: ClassifyRequest) -> tuple[Classification, Usage]:
        libraries.require("classification", libraries.CLASSIFY)
        started = time.perf_counter()
        text = "\n".join(t for t in (request.subject, request.text) if t)[:READ_CHARS]
        decision = request.language or language_of(text)
        language = decision.language
        label, score, sentiment_evidence = sentiment(text, language)
        scored = [] if request.learned else score_categories(text, request.categories)
        best_score, best, hits, similarity = scored[0] if scored else (0.0, None, [], 0.0)
        second = scored[1][0] if len(scored) > 1 else 0.0
        if request.learned is not None:
            category_id, confidence = request.learned.predict(text, language)
            team = next((c.team for c in request.categories if c.id == category_id), None)
            because = f"the tenant's trained model {request.learned.name}"
        elif best is None or best_score < 0.6:
            category_id, team, confidence = "other", None, 0.3
            because = "no category's keywords or examples matched"
        else:
            category_id, team = best.id, best.team
            confidence = min(0.97, 0.35 + 0.6 * (best_score - second) / (best_score + 0.5))
            evidence = [f"'{h}'" for h in hits[:3]]
            if similarity >= 0.25:
                evidence.append(f"{similarity:.0%} similar to its examples")
            because = "matched " + ", ".join(evidence) if evidence else "closest to its examples"
        urgent = _cues(_padded(text), lexicons.URGENT)
        if category_id in ("spam", "auto_reply"):
            priority = "low"
        elif urgent and (label == "negative" or category_id == "complaint"):
            priority = "urgent"
        elif urgent or category_id == "complaint" or score <= -0.6:
            priority = "high"
        else:
            priority = "normal"
        reasons = [f"{category_id} ({because})", f"language {language} (from {decision.reason})",
                   f"sentiment {label} ({score:+.2f}" + (f"; {', '.join(sentiment_evidence[:3])})" if
                                                         sentiment_evidence else ")")]
        if urgent:
            reasons.append(f"urgent wording: {', '.join(urgent[:2])}")
        reasoning = "Classified as " + "; ".join(reasons) + "."
        if len(reasoning) > REASONING_CHARS:
            reasoning = reasoning[:REASONING_CHARS - 1] + "…"
        result = Classification(
            category=category_id, priority=priority, sentiment=label, sentiment_score=round(score, 4),  # type: ignore[arg-type]
            language=language, confidence=round(confidence, 3), team=team, reasoning=reasoning,
        )
        model = request.learned.name if request.learned is not None else self.model
        return result, Usage(self.name, model, latency_ms=int((time.perf_counter() - started) * 1000))

    def draft(self, request: DraftRequest) -> tuple[DraftReply, Usage]:
        started = time.perf_counter()
        language = request.persona.language or request.language
        phrases = PHRASES.get(language, PHRASES["en"])
        first_name = (request.contact_name or "").split()[:1]  # a name of spaces only is no name
        greeting = phrases["hello"].format(name="".join(f" {n}" for n in first_name))
        # The passages come best first (fused ranking): the first answers if it scored high enough, and the
        # second joins it when it scored nearly as high (a message asking two things).
        first = [p for p in request.passages[:1] if p.score >= RELEVANT]
        relevant = first + [p for p in request.passages[1:2]
                            if first and p.score >= max(RELEVANT, SECOND * first[0].score)]
        if relevant:
            body = phrases["found"] + "\n\n" + "\n\n".join(_excerpt(p.content) for p in relevant)
            confidence = min(0.9, 0.4 + relevant[0].score)
        else:
            body = phrases["not_found"]
            confidence = 0.2
        text = f"{greeting}\n\n{phrases['thanks']}\n\n{body}\n\n{phrases['closing']}\n{request.persona.name}"
        reply = DraftReply(text=text, cited_chunk_ids=[p.chunk_id for p in relevant], confidence=round(confidence, 3),
                           language=language)
        return reply, Usage(self.name, self.model, latency_ms=int((time.perf_counter() - started) * 1000))

    def embed(self, texts: list[str]) -> tuple[list[list[float]], Usage]:
        return [embedding.embed(t, self.embedding_dim) for t in texts], Usage(self.name, self.embedding_model)


def _excerpt(content: str, limit: int = 600) -> str:
    content = " ".join(content.split())
    if len(content) <= limit:
        return content
    cut = content[:limit].rsplit(". ", 1)[0]
    return cut + "."


PHRASES: dict[str, dict[str, str]] = {
    "en": {"hello": "Hi{name},", "thanks": "Thank you for your message.",
           "found": "Here is what our help articles say about this:",
           "not_found": "I could not find an answer to this in our help articles, so a member of our team will "
                        "look into it and get back to you.",
           "closing": "Best regards,"},
    "fi": {"hello": "Hei{name},", "thanks": "Kiitos viestistäsi.",
           "found": "Ohjeissamme kerrotaan tästä seuraavaa:",
           "not_found": "En löytänyt tähän vastausta ohjeistamme, joten tiimimme selvittää asian ja palaa "
                        "sinulle pian.",
           "closing": "Ystävällisin terveisin,"},
    "sv": {"hello": "Hej{name},", "thanks": "Tack för ditt meddelande.",
           "found": "Så här står det i våra hjälpartiklar:",
           "not_found": "Jag hittade inget svar på detta i våra hjälpartiklar, så någon i vårt team tittar på "
                        "det och återkommer till dig.",
           "closing": "Vänliga hälsningar,"},
    "de": {"hello": "Hallo{name},", "thanks": "vielen Dank für Ihre Nachricht.",
           "found": "In unseren Hilfeartikeln steht dazu Folgendes:",
           "not_found": "Ich habe dazu in unseren Hilfeartikeln keine Antwort gefunden. Ein Kollege aus unserem "
                        "Team kümmert sich darum und meldet sich bei Ihnen.",
           "closing": "Mit freundlichen Grüßen"},
    "es": {"hello": "Hola{name}:", "thanks": "Gracias por tu mensaje.",
           "found": "Esto es lo que dicen nuestros artículos de ayuda:",
           "not_found": "No he encontrado la respuesta en nuestros artículos de ayuda, así que alguien de "
                        "nuestro equipo lo revisará y te responderá.",
           "closing": "Un saludo,"},
    "fr": {"hello": "Bonjour{name},", "thanks": "Merci pour votre message.",
           "found": "Voici ce qu'indiquent nos articles d'aide :",
           "not_found": "Je n'ai pas trouvé de réponse dans nos articles d'aide ; un membre de notre équipe va "
                        "examiner votre demande et revenir vers vous.",
           "closing": "Cordialement,"},
}
