"""The `openai` provider against a local server speaking the documented API, errors included."""

from __future__ import annotations

import json

import pytest

from pipelines.ai.base import AIBadOutput, AIRefused, AIUnavailable, ClassifyRequest, DraftRequest, Passage
from pipelines.ai.openai import OpenAIProvider, retry_after_seconds
from pipelines.ai.taxonomy import DEFAULT
from pipelines.errors import is_retryable
from tests.openai_server import openai_stub

GOOD = json.dumps({"category": "billing", "priority": "high", "sentiment": "negative", "sentiment_score": -0.6,
                   "language": "en", "confidence": 0.9, "reasoning": "Mentions a double charge.", "team": "Billing"})
REQUEST = ClassifyRequest("I was charged twice!", "Refund", DEFAULT, ("Billing", "Logistics"))


def provider(url: str, sleeps: list[float], **kw: object) -> OpenAIProvider:
    return OpenAIProvider(url, "sk-test", "gpt-4o-mini", sleep=sleeps.append, **kw)  # type: ignore[arg-type]


def test_classification_with_a_json_schema_response() -> None:
    with openai_stub() as (url, stub):
        stub.script = [("content", GOOD)]
        result, usage = provider(url, []).classify(REQUEST)
    assert (result.category, result.priority, result.team) == ("billing", "high", "Billing")
    assert (usage.provider, usage.model, usage.tokens_in, usage.tokens_out) == ("openai", "gpt-4o-mini", 120, 40)
    path, payload, headers = stub.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    schema = payload["response_format"]["json_schema"]["schema"]
    assert payload["response_format"]["type"] == "json_schema" and schema["additionalProperties"] is False
    assert "billing" in schema["properties"]["category"]["enum"]


def test_429_waits_for_retry_after_then_succeeds() -> None:
    sleeps: list[float] = []
    with openai_stub() as (url, stub):
        stub.script = [("status", 429, {"Retry-After": "7"}), ("content", GOOD)]
        result, _ = provider(url, sleeps).classify(REQUEST)
    assert result.category == "billing" and sleeps == [7.0]


def test_5xx_is_retried_with_backoff_then_gives_up() -> None:
    sleeps: list[float] = []
    with openai_stub() as (url, stub):
        stub.script = [("status", 500), ("status", 502), ("content", GOOD)]
        assert provider(url, sleeps).classify(REQUEST)[0].category == "billing"
        assert sleeps == [0.5, 1.0]
        stub.script = [("status", 503)] * 10
        with pytest.raises(AIUnavailable, match="server error 503 after 3 attempts"):
            provider(url, [], max_retries=2).classify(REQUEST)


def test_408_is_retried_like_a_server_error() -> None:
    sleeps: list[float] = []
    with openai_stub() as (url, stub):
        stub.script = [("status", 408), ("content", GOOD)]
        assert provider(url, sleeps).classify(REQUEST)[0].category == "billing"
        assert sleeps == [0.5]
        stub.script = [("status", 408)] * 3
        with pytest.raises(AIUnavailable, match="request timeout") as gave_up:
            provider(url, [], max_retries=2).classify(REQUEST)
    assert is_retryable(gave_up.value)


# OpenAI's documented error body for a bad key; the others answer in the same shape.
BAD_KEY = {"error": {"message": "Incorrect API key provided: sk-test. You can find your API key at "
                     "https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
                     "param": None, "code": "invalid_api_key"}}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_refused_request_is_permanent_after_one_attempt(status: int) -> None:
    sleeps: list[float] = []
    with openai_stub() as (url, stub):
        stub.script = [("status", status, None, BAD_KEY), ("content", GOOD)]
        with pytest.raises(AIRefused, match=f"refused the request \\({status}\\)") as refused:
            provider(url, sleeps).classify(REQUEST)
        assert len(stub.requests) == 1 and sleeps == []  # not asked again, no backoff waited
        assert "invalid_api_key: Incorrect API key provided: ***." in str(refused.value)  # never the key itself
        stub.script = [("status", status, None, BAD_KEY)]
        with pytest.raises(AIRefused):
            provider(url, sleeps).embed(["a"])
    assert not is_retryable(refused.value)


def test_a_timeout_is_unavailable_not_a_hang() -> None:
    with openai_stub() as (url, stub):
        stub.script = [("sleep", 1.5), ("sleep", 1.5)]
        with pytest.raises(AIUnavailable, match="timed out"):
            provider(url, [], timeout=0.5, max_retries=1).classify(REQUEST)


def test_malformed_output_gets_one_repair_attempt() -> None:
    with openai_stub() as (url, stub):
        stub.script = [("content", "Sure! Here is the JSON: {category: billing"), ("content", GOOD)]
        result, usage = provider(url, []).classify(REQUEST)
    assert result.category == "billing" and usage.tokens_in == 240  # both calls are paid for
    repair = stub.requests[1][1]["messages"]
    assert repair[-1]["role"] == "user" and "not valid JSON" in repair[-1]["content"]


def test_malformed_twice_is_a_permanent_failure() -> None:
    with openai_stub() as (url, stub):
        stub.script = [("content", "nope"), ("content", '{"category": "billing"}')]
        with pytest.raises(AIBadOutput, match="after a repair"):
            provider(url, []).classify(REQUEST)


def test_drafts_cite_only_given_passages_and_embeddings_keep_order() -> None:
    passage = Passage("6f1c2b1e-0000-4000-8000-000000000001", "Refunds", "Refunds take 5 days.", 0.7)
    draft = json.dumps({"text": "Hi! Refunds take 5 days.", "cited_chunk_ids": [passage.chunk_id, "invented"],
                        "confidence": 0.8, "language": "en"})
    with openai_stub() as (url, stub):
        stub.script = [("content", draft)]
        reply, _ = provider(url, []).draft(DraftRequest("When is my refund?", "Ann", "en", "billing", (passage,)))
        vectors, usage = provider(url, []).embed(["a", "b", "c"])
    assert reply.cited_chunk_ids == [passage.chunk_id]
    assert len(vectors) == 3 and usage.tokens_in == 5


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("12", 1.0) == 12.0
    assert retry_after_seconds(None, 3.0) == 3.0
    assert retry_after_seconds("garbage", 2.0) == 2.0
    assert retry_after_seconds("100000", 1.0) == 60.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 4.0) == 0.0
