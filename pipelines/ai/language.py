"""A message's language, from its text and, when the text cannot tell, from the evidence around it.

Chat lines are short ("Hello again", "Kiitos!", "ok"), and a detector on two words guesses: lingua put
"Hello again" at Finnish, 68%. So the text decides only when it is long enough and the detector sure;
otherwise the first of these that has something to say decides, in this order:

1. the channel's own hint on this message: Telegram's `language_code` (the sender's app language), an
   email's `Content-Language` header, the `api` channel's `contact.locale`;
2. the conversation: the customer's earlier messages in it (their text read together, else their hints);
3. the contact: the same person's messages in other conversations;
4. the text's common words ("where is my", "danke", "merci"), a weak vote that beats only the defaults;
5. the tenant's `default_language` setting;
6. the detector's best guess, however unsure (English when the text has no letters at all).

The detector is `lingua` (its models ship in the package; the `local-ai` extra), restricted to these six
languages, in its trigram ("low accuracy") mode: about 30 MB of models per process instead of about 230 MB.
Its high-accuracy mode reads short lines better (it puts "Hello again" at English, 61%) but not surely
enough to go without the evidence, so the memory buys little. Only the languages Intake writes replies in
count as evidence; a hint of any other language is ignored. The decision names what decided it, and the
classification's reasoning repeats that.

A process without `lingua` (a fleet on a hosted provider may leave the extra out) decides from the evidence
alone; with none, the decision's source is `none` and a hosted provider's own answer stands
(`pipelines.assist.with_language`).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.ai import lexicons, libraries

LANGUAGES = ("en", "fi", "sv", "de", "es", "fr")
SURE = 0.9  # the detector's confidence from which a text of MIN_WORDS words or more decides alone
CERTAIN = 0.99  # ... and from which even a shorter text does
MIN_WORDS = 3
CONTEXT_CHARS = 600  # of earlier messages read together
READ_CHARS = 4_000  # of a message that the detector and the word heuristics read: a long text costs no more
HINT_CHARS = 35  # of a hint's first tag that a reason quotes (a BCP 47 tag is rarely longer)
_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
_lock = threading.Lock()
_detector: Any = None


@dataclass(frozen=True)
class Earlier:
    """One of the customer's earlier messages: its text and its channel's hint, if any."""

    text: str
    hint: str | None = None


@dataclass(frozen=True)
class Evidence:
    """What is known around a message, besides its text."""

    hint: str | None = None  # the channel's raw hint ("en-US", "de, en"), as the provider sent it
    hint_source: str = "the channel's language hint"
    conversation: Sequence[Earlier] = ()  # the customer's earlier messages in this conversation, newest first
    contact: Sequence[Earlier] = ()  # the customer's messages in other conversations, newest first
    tenant_default: str | None = None


@dataclass(frozen=True)
class LanguageDecision:
    language: str  # ISO 639-1
    confidence: float
    reason: str  # "the Telegram language_code 'en'; the text alone was unsure: fi 68%"
    source: str  # what decided: text, channel, conversation, contact, words, tenant, guess or none (no detector)
    detected: tuple[str, float] = field(default=("en", 0.0))


def detector_available() -> bool:
    """Whether this process has the detector (`lingua`, of the local-ai extra)."""
    return not libraries.missing(libraries.DETECT)


def _lingua() -> Any:
    global _detector
    with _lock:
        if _detector is None:
            from lingua import IsoCode639_1, LanguageDetectorBuilder

            codes = [getattr(IsoCode639_1, code.upper()) for code in LANGUAGES]
            _detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_low_accuracy_mode().build()
        return _detector


def _head(text: str) -> str:
    """The part of a text that is read, with lone surrogates (which lingua refuses) replaced."""
    return text[:READ_CHARS].encode("utf-8", "replace").decode()


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, confidence) from the text alone; English with zero confidence when it has no letters, or
    when this process has no detector."""
    head = _head(text)
    if not _WORDS.search(head) or (_detector is None and not detector_available()):
        return "en", 0.0
    best = _lingua().compute_language_confidence_values(head)[0]
    return best.language.iso_code_639_1.name.lower(), float(best.value)


def _first_tag(raw: str) -> str:
    """The first tag of a list ("de" of "de, en;q=0.5"), read without splitting the rest of a long header."""
    return raw.lstrip()[:READ_CHARS].split(",", 1)[0].split(";", 1)[0].strip()


def normalise_hint(raw: Any) -> str | None:
    """A served ISO 639-1 code from a language tag ("en-US", "pt_BR", "de, en;q=0.5"), else None."""
    if not isinstance(raw, str):
        return None
    first = _first_tag(raw).replace("_", "-").split("-", 1)[0].lower()
    return first if first in LANGUAGES else None


def _quoted(raw: str) -> str:
    """A hint as a reason quotes it: its first tag, printable and short, whatever the sender put around it."""
    return "".join(ch for ch in _first_tag(raw)[:HINT_CHARS] if ch.isprintable())


def word_vote(text: str) -> str | None:
    """The one language whose common words the text uses most, or None when none or a tie."""
    votes: Counter[str] = Counter()
    for word in _WORDS.findall(text[:READ_CHARS].lower()):
        for language in lexicons.COMMON_WORDS.get(word, ()):
            votes[language] += 1
    ranked = votes.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def _from_earlier(messages: Sequence[Earlier]) -> tuple[str, str] | None:
    """(language, how) from earlier messages: their text read together when that is sure, else their hints."""
    joined, total = [], 0
    for message in messages:
        if total >= CONTEXT_CHARS:
            break
        joined.append(message.text[:CONTEXT_CHARS])
        total += len(message.text)
    text = "\n".join(joined)
    language, confidence = detect(text)
    if confidence >= SURE and len(_WORDS.findall(text)) >= MIN_WORDS:
        return language, f"their text, {confidence:.0%}"
    hint = next((h for h in (normalise_hint(m.hint) for m in messages) if h), None)
    return (hint, "their channel's hint") if hint else None


def decide(text: str, evidence: Evidence | None = None) -> LanguageDecision:
    evidence = evidence or Evidence()
    detected = detect(text)
    language, confidence = detected
    words = len(_WORDS.findall(text[:READ_CHARS]))
    if confidence >= CERTAIN or (confidence >= SURE and words >= MIN_WORDS):
        return LanguageDecision(language, confidence, f"its text, {confidence:.0%}", "text", detected)
    if not detector_available():
        unsure = "no language detector in this process"
    elif words:
        unsure = f"the text alone was unsure: {language} {confidence:.0%}"
    else:
        unsure = "the text has no words"
    hint = normalise_hint(evidence.hint)
    if hint and evidence.hint is not None:
        return LanguageDecision(hint, 0.9, f"{evidence.hint_source} '{_quoted(evidence.hint)}'; {unsure}",
                                "channel", detected)
    for messages, source, whose in ((evidence.conversation, "conversation", "the conversation's earlier messages"),
                                    (evidence.contact, "contact", "the contact's other messages")):
        found = _from_earlier(messages) if messages else None
        if found:
            return LanguageDecision(found[0], 0.8, f"{whose} ({found[1]}); {unsure}", source, detected)
    voted = word_vote(text)
    if voted:
        return LanguageDecision(voted, 0.6, f"its common words; {unsure}", "words", detected)
    default = normalise_hint(evidence.tenant_default)
    if default:
        return LanguageDecision(default, 0.5, f"the tenant's default_language; {unsure}", "tenant", detected)
    if not detector_available():
        return LanguageDecision(language, 0.0, f"nothing: {unsure} and no other evidence", "none", detected)
    return LanguageDecision(language, confidence, f"its text, {confidence:.0%}, nothing else to go on", "guess",
                            detected)
