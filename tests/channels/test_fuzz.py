"""Fuzz targets for every channel adapter and for the worker's parse-normalize-store path.

Three properties, each checked on the seed corpus (`tests/fuzz/seeds.py`) first and then on generated
deliveries (`tests/fuzz/strategies.py`):

- `verify` on any request raises `SignatureError` or nothing; a correctly signed delivery verifies.
- `parse` on any body raises `PayloadError` or returns a Delivery that PostgreSQL can store: no NUL, no
  lone surrogate, every string UTF-8, keys and ids free of control characters, JSON parts that orjson
  writes.
- A delivery that parses, stored as the ingress stores it and ingested by `ingest_events` against the real
  database, ends `processed` or `failed`, never left `received` and never with an exception escaping.

`make test` runs a bounded number of examples; `make fuzz` runs many more (`HYPOTHESIS_PROFILE=long`).
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.channels import ADAPTERS, Delivery, PayloadError, SignatureError, VerifyContext, WebhookRequest
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.fuzz import seeds
from tests.fuzz.seeds import Seed
from tests.fuzz.strategies import cases, fuzz_settings, header_values, nasty_text
from tests.webhooks import sign

pytestmark = pytest.mark.fuzz

CHANNELS = sorted(ADAPTERS)
URL = "https://hooks.example.com/v1/webhooks/fuzz/00000000-0000-0000-0000-000000000000"
SECRETS = {
    "twilio": {"auth_token": "twilio-auth-token"},
    "whatsapp": {"app_secret": "meta-app-secret", "verify_token": "verify"},
    "postmark": {"basic_user": "user", "basic_password": "password"},
    "sendgrid": {"basic_user": "user", "basic_password": "password"},
    "mailgun": {"signing_key": "key-mailgun-signing"},
    "telegram": {"secret_token": "telegram-secret_token"},
    "api": {"signing_secret": "whsec_" + base64.b64encode(b"k" * 32).decode()},
}
# Channels whose signature does not depend on parsing the body: a signed delivery must always verify.
SIGNED_OVER_RAW_BYTES = {"api", "whatsapp", "telegram", "postmark", "sendgrid"}
SIGNATURE_HEADERS = ["x-twilio-signature", "x-hub-signature-256", "webhook-id", "webhook-timestamp",
                     "webhook-signature", "authorization", "x-telegram-bot-api-secret-token", "content-type"]


def request_for(seed: Seed, headers: dict[str, str] | None = None) -> WebhookRequest:
    all_headers = {"content-type": seed.content_type, "webhook-id": f"wh-{seed.name}", **seed.headers,
                   **(headers or {})}
    return WebhookRequest(method="POST", url=URL, headers=all_headers, body=seed.body,
                          received_at=datetime(2026, 11, 20, 10, 0, tzinfo=UTC))


def with_seeds(channel: str, check: Callable[..., None], *variants: dict[str, Any],
               max_bytes: int | None = None) -> Callable[..., None]:
    """`check` with every seed of `channel` as an explicit example (once per variant of the other arguments)."""
    for seed in seeds.for_channel(channel):
        if max_bytes is not None and len(seed.body) > max_bytes:
            continue
        for variant in variants or ({},):
            check = example(case=seed, **variant)(check)
    return check


# -- storable -----------------------------------------------------------------------------------------
def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _printable_key(value: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


def assert_storable(delivery: Delivery) -> None:
    """What PostgreSQL and the worker need from every parsed delivery."""
    for value in _strings(delivery.model_dump()):
        assert "\x00" not in value, f"NUL in {value[:80]!r}"
        value.encode("utf-8")  # raises on a lone surrogate
    keys = [delivery.dedupe_key, *(m.external_id for m in delivery.messages),
            *(s.external_id for s in delivery.statuses)]
    for key in keys:
        assert key and len(key) <= 512 and _printable_key(key), f"unusable key {key[:80]!r}"
    for message in delivery.messages:
        for part in (message.metadata, message.headers, [a.model_dump(exclude_none=True) for a in message.attachments]):
            orjson.dumps(part, default=str)


# -- verify -------------------------------------------------------------------------------------------
def as_received(value: str) -> str:
    """A header value as the ingress hands it over: the bytes a client sent, decoded as Latin-1."""
    return value.encode("utf-8", errors="surrogatepass").decode("latin-1")


hostile_headers = st.dictionaries((st.sampled_from(SIGNATURE_HEADERS) | nasty_text.map(str.lower)).map(as_received),
                                  (header_values | st.text(max_size=40)).map(as_received), max_size=5)


@pytest.mark.parametrize("channel", CHANNELS)
def test_verify_raises_only_signature_errors(channel: str) -> None:
    adapter = ADAPTERS[channel]
    now = datetime.now(UTC)

    @fuzz_settings(40)
    @given(case=cases(channel), extra=hostile_headers, signed=st.booleans(), skew=st.integers(-1000, 1000))
    def check(case: Seed, extra: dict[str, str], signed: bool, skew: int) -> None:
        headers = dict(extra)
        body = case.body
        if signed:
            signed_headers, body = sign(channel, SECRETS[channel], URL, case.body, case.content_type,
                                        now=now.timestamp() + skew)
            headers = {**signed_headers, **headers}
        request = WebhookRequest(method="POST", url=URL, headers={"content-type": case.content_type, **headers},
                                 body=body)
        try:
            adapter.verify(request, SECRETS[channel], VerifyContext(now=now))
        except SignatureError:
            assert not (signed and not extra and abs(skew) < 300 and channel in SIGNED_OVER_RAW_BYTES), \
                "a correctly signed delivery was refused"

    with_seeds(channel, check, {"extra": {}, "signed": True, "skew": 0}, {"extra": {}, "signed": False, "skew": 0})()


# -- parse --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", CHANNELS)
def test_parse_refuses_or_returns_storable_deliveries(channel: str) -> None:
    adapter = ADAPTERS[channel]

    @fuzz_settings(60)
    @given(case=cases(channel))
    def check(case: Seed) -> None:
        try:
            delivery = adapter.parse(request_for(case))
        except PayloadError:
            return
        assert_storable(delivery)

    with_seeds(channel, check)()


# -- parse, normalize, store --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inboxes(app_engine: Engine) -> dict[str, CreatedInbox]:
    return {channel: new_inbox(app_engine, channel, tenant_name=f"Fuzz {channel}") for channel in CHANNELS}


STORE_EVENT = text(
    "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body) "
    "VALUES (:t, :i, :c, :k, :ct, CAST(:h AS jsonb), :b) "
    "ON CONFLICT (tenant_id, inbox_id, dedupe_key) DO UPDATE SET dedupe_key = EXCLUDED.dedupe_key RETURNING id")


def store_and_ingest(engine: Engine, inbox: CreatedInbox, case: Seed) -> str:
    """Store the event as the ingress does, ingest it as a worker does; the event's status afterwards."""
    from pipelines.ingest import IngestPolicy, ingest_events

    request = request_for(case, {"x-intake-url": URL})
    delivery = ADAPTERS[inbox.channel].parse(request)
    assert_storable(delivery)
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        event_id = conn.execute(STORE_EVENT, {
            "t": inbox.tenant_id, "i": inbox.id, "c": inbox.channel, "k": delivery.dedupe_key,
            "ct": case.content_type, "h": orjson.dumps(dict(request.headers)).decode(), "b": case.body}).scalar_one()
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        ingest_events(conn, inbox.tenant_id, [event_id], IngestPolicy(reopen_window=timedelta(hours=72)))
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return str(conn.execute(text("SELECT status FROM inbound_events WHERE id = :id"),
                                {"id": event_id}).scalar_one())


@pytest.mark.parametrize("channel", CHANNELS)
def test_parsed_deliveries_are_ingested_or_marked_failed(
    channel: str, app_engine: Engine, inboxes: dict[str, CreatedInbox]
) -> None:
    adapter = ADAPTERS[channel]

    @fuzz_settings(15)
    @given(case=cases(channel, shaped_only=True))
    def check(case: Seed) -> None:
        try:
            adapter.parse(request_for(case))
        except PayloadError:
            return  # refused before acknowledgement: never stored
        assert store_and_ingest(app_engine, inboxes[channel], case) in ("processed", "failed")

    # The 10,000-part forms take seconds to parse and add nothing here that the parse target does not check.
    with_seeds(channel, check, max_bytes=256 * 1024)()
