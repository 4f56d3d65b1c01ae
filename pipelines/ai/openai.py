"""Any OpenAI-compatible endpoint (OpenAI, Azure-style gateways, vLLM, Ollama, llama.cpp server).

Chat completions with a JSON-schema response format, validated by pydantic; embeddings from /embeddings.
Timeouts, 408 and 5xx are retried with backoff, a 429 waits for its Retry-After; when retries run out the
call raises `AIUnavailable` (the job retries later). Any other 4xx (a bad API key, an unknown model, a
request the provider will not take) raises `AIRefused` at once: the same request is refused every time,
so the job goes to the dead-letter ledger without retries. Output that does not fit the schema gets one
repair attempt, then `AIBadOutput` (permanent as well).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from pipelines.ai.base import (
    AIBadOutput,
    AIRefused,
    AIUnavailable,
    Classification,
    ClassifyRequest,
    DraftReply,
    DraftRequest,
    Usage,
)

CLASSIFY_SYSTEM = """You classify customer messages for a support team.
Categories (id: description): {categories}
Use "other" when none fits. Teams: {teams}.
Priority: urgent (explicit urgency and harm), high (angry, blocked, complaint), normal, low (spam, automatic).
Sentiment score from -1 (very negative) to 1 (very positive). Language: the ISO 639-1 code of the message.
Confidence: your probability that the category is right. Reasoning: one sentence naming the evidence.
Answer with JSON only, matching the schema."""

DRAFT_SYSTEM = """You are {name}, writing a reply for a human agent to review. Tone: {tone}. {extra}
Write in the language with ISO 639-1 code "{language}". Ground every statement in the numbered passages;
if they do not answer the question, say plainly that you will check and get back, and promise nothing else.
List the ids of the passages you used. Answer with JSON only, matching the schema."""


def _schema(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": {
        "type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}}}


def classification_format(categories: list[str], teams: list[str]) -> dict[str, Any]:
    return _schema("classification", {
        "category": {"type": "string", "enum": [*categories, "other"]},
        "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
        "sentiment": {"type": "string", "enum": ["negative", "neutral", "positive"]},
        "sentiment_score": {"type": "number"},
        "language": {"type": "string"},
        "confidence": {"type": "number"},
        "reasoning": {"type": "string"},
        "team": {"type": ["string", "null"], "enum": [*teams, None]} if teams else {"type": "null"},
    })


DRAFT_FORMAT = _schema("draft", {
    "text": {"type": "string"},
    "cited_chunk_ids": {"type": "array", "items": {"type": "string"}},
    "confidence": {"type": "number"},
    "language": {"type": "string"},
})


def retry_after_seconds(value: str | None, default: float) -> float:
    """Retry-After as seconds or an HTTP date; bounded so one header cannot stall a worker."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return max(0.0, min(seconds, 60.0))


class OpenAIProvider:
    name = "openai"

    def __init__(self, base_url: str, api_key: str | None, model: str, *, embedding_model: str = "",
                 timeout: float = 30.0, max_retries: int = 3, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.model = model
        self.embedding_model = embedding_model or "text-embedding-3-small"
        self._max_retries = max_retries
        self._sleep = sleep
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, transport=transport,
                                    timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any], int]:
        started = time.perf_counter()
        last = "no attempt"
        for attempt in range(self._max_retries + 1):
            try:
                response = self._client.post(path, content=orjson.dumps(payload),
                                             headers={"Content-Type": "application/json"})
            except httpx.TimeoutException:
                last = "timed out"
            except httpx.TransportError as exc:
                last = f"unreachable: {type(exc).__name__}"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        raise AIBadOutput("the provider's response is not JSON") from None
                    return data, int((time.perf_counter() - started) * 1000)
                if response.status_code == 429:
                    last = "rate limited (429)"
                    if attempt < self._max_retries:
                        self._sleep(retry_after_seconds(response.headers.get("retry-after"), 2.0 * 2**attempt))
                    continue
                if response.status_code >= 500:
                    last = f"server error {response.status_code}"
                elif response.status_code == 408:
                    last = "request timeout (408)"
                else:
                    raise AIRefused(f"the provider refused the request ({response.status_code}): "
                                    f"{self._refusal(response)}")
            if attempt < self._max_retries:
                self._sleep(min(30.0, 0.5 * 2**attempt))
        raise AIUnavailable(f"{path}: {last} after {self._max_retries + 1} attempts")

    def _refusal(self, response: httpx.Response) -> str:
        """The provider's own words for a refusal (OpenAI's `error.code` and `error.message`), without the key.

        A bad-key answer may quote the key it was given: it never reaches the ledger or the logs.
        """
        try:
            error = response.json()["error"]
            detail = f"{error.get('code') or error.get('type') or 'error'}: {error.get('message')}"
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = response.text
        if self._api_key:
            detail = detail.replace(self._api_key, "***")
        return detail[:300]

    def _structured(self, messages: list[dict[str, str]], response_format: dict[str, Any],
                    model_type: type[BaseModel], *, model: str | None = None, temperature: float | None = None,
                    max_tokens: int | None = None) -> tuple[Any, Usage]:
        """One call for a JSON answer (and one repair). `model`, `temperature` and `max_tokens` are a persona's
        (None: the provider's model, 0, and no cap); the usage names the model that answered, priced as such."""
        model = model or self.model
        request: dict[str, Any] = {"model": model, "response_format": response_format,
                                   "temperature": 0 if temperature is None else temperature}
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        tokens_in = tokens_out = latency = 0
        for repair in (False, True):
            data, elapsed = self._post("/chat/completions", {**request, "messages": messages})
            latency += elapsed
            usage = data.get("usage") or {}
            tokens_in += int(usage.get("prompt_tokens") or 0)
            tokens_out += int(usage.get("completion_tokens") or 0)
            try:
                content = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                content = None
            try:
                value = model_type.model_validate_json(content or "")
            except ValidationError as exc:
                if repair:
                    raise AIBadOutput(f"the model's answer does not fit the schema after a repair: "
                                      f"{exc.errors()[0]['msg']}") from None
                messages = [*messages, {"role": "assistant", "content": str(content)},
                            {"role": "user", "content": "That answer is not valid JSON for the schema "
                             f"({exc.errors()[0]['msg']}). Reply with only the corrected JSON."}]
                continue
            return value, Usage(self.name, model, tokens_in, tokens_out, latency)
        raise AssertionError("unreachable")

    def classify(self, request: ClassifyRequest) -> tuple[Classification, Usage]:
        categories = "; ".join(f"{c.id}: {c.description}" for c in request.categories)
        system = CLASSIFY_SYSTEM.format(categories=categories, teams=", ".join(request.teams) or "none")
        text = "\n".join(t for t in (f"Subject: {request.subject}" if request.subject else None, request.text) if t)
        fmt = classification_format([c.id for c in request.categories], list(request.teams))
        result, usage = self._structured([{"role": "system", "content": system}, {"role": "user", "content": text}],
                                         fmt, Classification)
        return result, usage

    def draft(self, request: DraftRequest) -> tuple[DraftReply, Usage]:
        persona = request.persona
        system = DRAFT_SYSTEM.format(name=persona.name, tone=persona.tone, extra=persona.system_prompt,
                                     language=persona.language or request.language)
        passages = "\n\n".join(f"[{p.chunk_id}] {p.heading}\n{p.content}" for p in request.passages) or "(none)"
        user = (f"Customer ({request.contact_name or 'unknown'}), category {request.category}:\n{request.message}"
                f"\n\nPassages:\n{passages}")
        result, usage = self._structured([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                         DRAFT_FORMAT, DraftReply, model=persona.model,
                                         temperature=persona.temperature, max_tokens=persona.max_tokens)
        known = {p.chunk_id for p in request.passages}
        result.cited_chunk_ids = [c for c in result.cited_chunk_ids if c in known]  # never cite what was not given
        return result, usage

    def embed(self, texts: list[str]) -> tuple[list[list[float]], Usage]:
        data, latency = self._post("/embeddings", {"model": self.embedding_model, "input": texts})
        try:
            rows = sorted(data["data"], key=lambda row: row["index"])
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError):
            raise AIBadOutput("the embeddings response does not have the documented shape") from None
        if len(vectors) != len(texts):
            raise AIBadOutput(f"asked for {len(texts)} embeddings, got {len(vectors)}")
        usage = data.get("usage") or {}
        return vectors, Usage(self.name, self.embedding_model, int(usage.get("prompt_tokens") or 0), 0, latency)
