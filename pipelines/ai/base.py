"""The one interface every AI provider implements, and the values that cross it.

    classify(ClassifyRequest) -> (Classification, Usage)
    draft(DraftRequest) -> (DraftReply, Usage)
    embed(texts) -> (vectors, Usage)

Errors (see `pipelines.errors`): `AIUnavailable` (timeouts, 408, 429, 5xx: retry later), `AIRefused` (any
other 4xx, such as a bad API key or an unknown model: permanent, retrying cannot fix the request) and
`AIBadOutput` (the answer is not what was asked for, even after one repair attempt: permanent for this
message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from pipelines.ai.language import LanguageDecision
from pipelines.ai.taxonomy import Category
from pipelines.errors import IntakeError, PermanentError, RetryableError

PROMPT_VERSION = "v1"
Priority = Literal["low", "normal", "high", "urgent"]
Sentiment = Literal["negative", "neutral", "positive"]


class AIError(IntakeError):
    """An AI provider could not answer; each subclass is also permanent or retryable."""


class AIUnavailable(AIError, RetryableError):
    """The provider is down, slow or rate-limiting us: try again later."""


class AIBadOutput(AIError, PermanentError):
    """The provider answered, but not in the shape asked for."""


class AIRefused(AIError, PermanentError):
    """The provider refused the request itself (401 bad key, 403, 404 unknown model, 400): the same request
    is refused on every attempt."""


class Classification(BaseModel):
    category: str
    priority: Priority
    sentiment: Sentiment
    sentiment_score: float = Field(ge=-1, le=1)
    language: str = Field(min_length=2, max_length=2)
    confidence: float = Field(ge=0, le=1)
    reasoning: str = Field(min_length=1, max_length=1000)
    team: str | None = None


class DraftReply(BaseModel):
    text: str = Field(min_length=1)
    cited_chunk_ids: list[str] = Field(default_factory=list)
    confidence: float = Field(ge=0, le=1)
    language: str = Field(min_length=2, max_length=2)


@dataclass(frozen=True)
class Usage:
    provider: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int = 0


@dataclass(frozen=True)
class ClassifyRequest:
    text: str
    subject: str | None
    categories: tuple[Category, ...]
    teams: tuple[str, ...] = ()
    language: LanguageDecision | None = None  # decided from the text and its context; None: from the text
    learned: LearnedModel | None = None  # the tenant's trained classifier (the local provider's), if any


class LearnedModel(Protocol):
    """A tenant's trained classifier as a provider uses it (`pipelines.ai.training.Loaded`)."""

    @property
    def name(self) -> str: ...

    def predict(self, text: str, language: str | None = None) -> tuple[str, float]: ...


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    heading: str
    content: str
    score: float


@dataclass(frozen=True)
class Persona:
    name: str = "Customer support"
    tone: str = "friendly and concise"
    system_prompt: str = ""
    language: str | None = None  # None: answer in the customer's language
    # Sent with a hosted provider's draft; None: the tenant's model, temperature 0, the provider's own length.
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class DraftRequest:
    message: str
    contact_name: str | None
    language: str
    category: str
    passages: tuple[Passage, ...]
    persona: Persona = field(default_factory=Persona)


class Provider(Protocol):
    name: str
    model: str
    embedding_model: str

    def classify(self, request: ClassifyRequest) -> tuple[Classification, Usage]: ...

    def draft(self, request: DraftRequest) -> tuple[DraftReply, Usage]: ...

    def embed(self, texts: list[str]) -> tuple[list[list[float]], Usage]: ...
