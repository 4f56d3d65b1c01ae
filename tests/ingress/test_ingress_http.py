"""The ingress over real HTTP, against the running `intake serve` process, real Postgres and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis
from sqlalchemy import Engine, text

from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.processes import wait_for, web_server
from tests.webhooks import fixture, sign

GENUINE = {
    "twilio": "twilio/sms_inbound.form", "whatsapp": "whatsapp/text.json", "postmark": "postmark/inbound.json",
    "mailgun": "mailgun/inbound.form", "sendgrid": "sendgrid/inbound.multipart",
    "telegram": "telegram/message.json", "api": "api/message.json",
}
CREDENTIAL_HEADERS = ("authorization", "x-telegram-bot-api-secret-token")


@pytest.fixture(scope="module")
def ingress(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`intake serve` with this module's limits (a small body cap, its own log to read)."""
    log = tmp_path_factory.mktemp("web") / "web.log"
    with web_server({"INTAKE_RATE_LIMIT_PER_SECOND": "10000", "INTAKE_RATE_LIMIT_BURST": "10000",
                     "INTAKE_MAX_BODY_BYTES": "65536"}, log) as base:
        yield base


def url_for(base: str, inbox: CreatedInbox) -> str:
    return f"{base}/v1/webhooks/{inbox.channel}/{inbox.id}"


def stored_events(engine: Engine, inbox: CreatedInbox) -> list[dict[str, object]]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(inbox.tenant_id)})
        rows = conn.execute(text("SELECT id, dedupe_key, headers, body, status FROM inbound_events "
                                 "WHERE inbox_id = :i"), {"i": inbox.id}).mappings().all()
    return [dict(r) for r in rows]


def enqueued_with(redis_client: redis.Redis, event_id: object) -> int:
    bodies = redis_client.hvals("dramatiq:ingest.msgs")
    return sum(1 for body in bodies if str(event_id).encode() in body)


def post(base: str, inbox: CreatedInbox, name: str, **kwargs: object) -> httpx.Response:
    body, ctype = fixture(name)
    url = url_for(base, inbox)
    headers, body = sign(inbox.channel, inbox.secrets, url, body, ctype, **kwargs)  # type: ignore[arg-type]
    return httpx.post(url, content=body, headers=headers, timeout=10)


@pytest.mark.parametrize("channel", sorted(GENUINE))
def test_a_genuine_delivery_is_stored_then_enqueued(
    ingress: str, app_engine: Engine, redis_client: redis.Redis, channel: str
) -> None:
    inbox = new_inbox(app_engine, channel)
    response = post(ingress, inbox, GENUINE[channel])
    assert response.status_code == 200, response.text
    (event,) = stored_events(app_engine, inbox)
    assert event["status"] == "received"
    assert bytes(event["body"]) == response.request.content  # type: ignore[arg-type]  (the raw delivery, exactly)
    headers = event["headers"]
    assert isinstance(headers, dict)
    assert not any(h in headers for h in CREDENTIAL_HEADERS)
    assert headers["x-intake-url"] == url_for(ingress, inbox)
    # The job is sent right after the commit, off the request path.
    wait_for(lambda: enqueued_with(redis_client, event["id"]) == 1, timeout=10)


def test_twilio_gets_empty_twiml(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "twilio")
    response = post(ingress, inbox, GENUINE["twilio"])
    assert response.headers["content-type"].startswith("text/xml")
    assert b"<Response></Response>" in response.content


def test_five_concurrent_copies_store_and_enqueue_once(
    ingress: str, app_engine: Engine, redis_client: redis.Redis
) -> None:
    inbox = new_inbox(app_engine, "whatsapp")
    body, ctype = fixture("whatsapp/batch.json")
    url = url_for(ingress, inbox)
    headers, body = sign("whatsapp", inbox.secrets, url, body, ctype)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            responses = await asyncio.gather(*(client.post(url, content=body, headers=headers) for _ in range(5)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 5
    assert post(ingress, inbox, "whatsapp/batch.json").status_code == 200  # and a later retry
    (event,) = stored_events(app_engine, inbox)
    wait_for(lambda: enqueued_with(redis_client, event["id"]) >= 1, timeout=10)
    assert enqueued_with(redis_client, event["id"]) == 1


def test_api_retries_dedupe_on_webhook_id(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    for _ in range(3):
        assert post(ingress, inbox, GENUINE["api"], webhook_id="msg_retry_1").status_code == 200
    assert post(ingress, inbox, GENUINE["api"], webhook_id="msg_retry_2").status_code == 200
    assert sorted(e["dedupe_key"] for e in stored_events(app_engine, inbox)) == ["msg_retry_1", "msg_retry_2"]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    data = response.json()
    assert data["error"] == code and isinstance(data["detail"], str) and data["detail"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("channel", sorted(GENUINE))
def test_forged_and_unsigned_deliveries_are_refused_alike(ingress: str, app_engine: Engine, channel: str) -> None:
    inbox = new_inbox(app_engine, channel)
    body, ctype = fixture(GENUINE[channel])
    url = url_for(ingress, inbox)
    wrong = {k: (v + "x" if k != "content-type" else v) for k, v in sign(channel, inbox.secrets, url, body, ctype)[0].items()}
    unsigned = {"content-type": ctype, "webhook-id": "m", "webhook-timestamp": "1"}
    forged = httpx.post(url, content=body, headers=wrong)
    missing = httpx.post(url, content=body, headers=unsigned)
    assert_error(forged, 401, "invalid_signature")
    assert_error(missing, 401, "invalid_signature")
    assert forged.json() == missing.json()  # no hint about which part was wrong
    assert stored_events(app_engine, inbox) == []


def test_unknown_disabled_and_mismatched_inboxes_are_404(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    body, ctype = fixture(GENUINE["api"])
    assert_error(httpx.post(f"{ingress}/v1/webhooks/api/{uuid.uuid4()}", content=body), 404, "unknown_inbox")
    assert_error(httpx.post(f"{ingress}/v1/webhooks/api/not-a-uuid", content=body), 404, "unknown_inbox")
    assert_error(httpx.post(f"{ingress}/v1/webhooks/telegram/{inbox.id}", content=body), 404, "unknown_inbox")
    assert_error(httpx.post(f"{ingress}/v1/webhooks/fax/{inbox.id}", content=body), 404, "unknown_inbox")
    disabled = new_inbox(app_engine, "api")
    with app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(disabled.tenant_id)})
        conn.execute(text("UPDATE inboxes SET enabled = false WHERE id = :i"), {"i": disabled.id})
    headers, body = sign("api", disabled.secrets, url_for(ingress, disabled), body, ctype)
    assert_error(httpx.post(url_for(ingress, disabled), content=body, headers=headers), 404, "unknown_inbox")
    assert stored_events(app_engine, disabled) == []


def test_oversized_bodies_are_413_by_header_and_by_stream(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    big = b'{"pad": "' + b"x" * 70_000 + b'"}'
    headers, big = sign("api", inbox.secrets, url_for(ingress, inbox), big, "application/json")
    assert_error(httpx.post(url_for(ingress, inbox), content=big, headers=headers), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    streamed = httpx.post(url_for(ingress, inbox), content=chunks(), headers=headers)
    assert_error(streamed, 413, "payload_too_large")
    assert stored_events(app_engine, inbox) == []


def test_malformed_but_authentic_bodies_are_400(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    bad = b'{"id": "x", "type": "message", "sent_at": "yesterday", "text": "hi", "contact": {"email": "a@b.co"}}'
    headers, bad = sign("api", inbox.secrets, url_for(ingress, inbox), bad, "application/json")
    response = httpx.post(url_for(ingress, inbox), content=bad, headers=headers)
    assert_error(response, 400, "malformed_payload")
    assert "sent_at" in response.json()["detail"]
    assert stored_events(app_engine, inbox) == []


def test_rate_limit_is_429_with_retry_after(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "telegram", settings={"rate_limit_per_second": 0.5, "rate_limit_burst": 2})
    codes = []
    for update_id in range(3):
        body = orjson.dumps({"update_id": 500 + update_id, "message": {
            "message_id": update_id, "date": 1700000000, "chat": {"id": 7, "type": "private"},
            "from": {"id": 7, "first_name": "Rate"}, "text": "hi"}})
        headers, body = sign("telegram", inbox.secrets, url_for(ingress, inbox), body, "application/json")
        response = httpx.post(url_for(ingress, inbox), content=body, headers=headers)
        codes.append(response.status_code)
    assert codes == [200, 200, 429]
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    assert len(stored_events(app_engine, inbox)) == 2


def test_mailgun_token_reuse_is_refused(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "mailgun")
    body, ctype = fixture(GENUINE["mailgun"])
    url = url_for(ingress, inbox)
    headers, signed = sign("mailgun", inbox.secrets, url, body, ctype)
    assert httpx.post(url, content=signed, headers=headers).status_code == 200
    # The same timestamp, token and signature around a different message: a replay.
    replay = signed.replace(b"Thanks%2C+that+works", b"Send+money+now")
    assert_error(httpx.post(url, content=replay, headers=headers), 401, "invalid_signature")
    assert len(stored_events(app_engine, inbox)) == 1


def test_whatsapp_subscription_handshake(ingress: str, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "whatsapp")
    url = url_for(ingress, inbox)
    ok = httpx.get(url, params={"hub.mode": "subscribe", "hub.verify_token": inbox.secrets["verify_token"],
                                "hub.challenge": "1158201444"})
    assert (ok.status_code, ok.text) == (200, "1158201444")
    bad = httpx.get(url, params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"})
    assert_error(bad, 403, "invalid_verify_token")


def test_health_readiness_and_metrics(ingress: str, app_engine: Engine) -> None:
    # A delivery of its own to count: under xdist the module's other tests may have run on another process's server.
    assert post(ingress, new_inbox(app_engine, "api"), GENUINE["api"]).status_code == 200
    assert httpx.get(ingress + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(ingress + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    metrics = httpx.get(ingress + "/metrics").text
    assert 'intake_webhook_requests_total{channel="api",outcome="200"}' in metrics
    assert "intake_webhook_latency_seconds_bucket" in metrics
    assert_error(httpx.put(ingress + "/healthz"), 405, "method_not_allowed")


def test_deliveries_are_acknowledged_and_kept_while_redis_is_down(
    stack: dict[str, str], app_engine: Engine
) -> None:
    inbox = new_inbox(app_engine, "telegram")
    with web_server({"REDIS_URL": "redis://127.0.0.1:1/0"}) as base:
        response = post(base, inbox, GENUINE["telegram"])
        assert response.status_code == 200
        ready = httpx.get(base + "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unavailable")
        assert "intake_enqueue_failures_total 1.0" in httpx.get(base + "/metrics").text
    (event,) = stored_events(app_engine, inbox)
    assert event["status"] == "received"  # left for the sweeper to enqueue


SCOPE = {"type": "http", "scheme": "http", "server": ("10.0.0.5", 8000), "root_path": "",
         "path": "/v1/webhooks/twilio/abc", "query_string": b""}


@pytest.mark.parametrize(("settings", "headers", "query", "expected"), [
    ({}, {"host": "intake.example"}, b"",
     ("http://intake.example/v1/webhooks/twilio/abc", ("http://intake.example:80/v1/webhooks/twilio/abc",))),
    ({}, {}, b"bodySHA256=x%20y",  # no Host header: the address the server listens on
     ("http://10.0.0.5:8000/v1/webhooks/twilio/abc?bodySHA256=x%20y", ())),
    ({"trust_proxy_headers": True},  # the entry the trusted proxy appended, not the client's own
     {"host": "10.0.0.5:8000", "x-forwarded-proto": "http, https", "x-forwarded-host": "evil.example, hooks.example"},
     b"", ("https://hooks.example/v1/webhooks/twilio/abc", ("https://hooks.example:443/v1/webhooks/twilio/abc",))),
    ({}, {"host": "10.0.0.5:8000", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}, b"",
     ("http://10.0.0.5:8000/v1/webhooks/twilio/abc", ())),  # not trusted unless configured
    ({"trust_proxy_headers": False}, {"host": "10.0.0.5:8000", "x-forwarded-host": "evil.example"}, b"",
     ("http://10.0.0.5:8000/v1/webhooks/twilio/abc", ())),
    ({"public_base_url": "https://hooks.example:443/"}, {"host": "ignored", "x-forwarded-host": "ignored"}, b"",
     ("https://hooks.example:443/v1/webhooks/twilio/abc", ("https://hooks.example/v1/webhooks/twilio/abc",))),
])
def test_the_url_is_rebuilt_as_the_provider_requested_it(
    settings: dict[str, object], headers: dict[str, str], query: bytes, expected: tuple[str, tuple[str, ...]]
) -> None:
    from config import Settings
    from workers.web.app import Ingress

    ingress = Ingress(Settings(**settings), "postgresql://unused", "redis://unused", "k" * 44)
    assert ingress.provider_url({**SCOPE, "query_string": query}, headers) == expected
