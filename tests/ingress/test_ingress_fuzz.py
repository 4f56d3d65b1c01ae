"""Random bodies, headers and content types at every channel route: never a 5xx, never a crash.

Half the examples are correctly signed, so the random bodies reach the parsers, not just the signature
check.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from pipelines.inboxes import CHANNELS, CreatedInbox
from tests.factories import new_inbox
from tests.fuzz.strategies import fuzz_settings
from tests.webhooks import sign

pytestmark = pytest.mark.fuzz


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()  # the stdlib writes any integer, as a hostile sender might


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
# Shapes close to real payloads, so the parsers' deeper branches run too.
shaped = st.fixed_dictionaries({}, optional={
    "object": st.sampled_from(["whatsapp_business_account", "page"]),
    "entry": json_values, "update_id": st.integers(), "message": json_values, "edited_message": json_values,
    "MessageID": json_values, "FromFull": json_values, "Headers": json_values, "id": json_values,
    "type": st.sampled_from(["message", "status", "other"]), "sent_at": json_values, "contact": json_values,
    "items": json_values, "text": json_values,
})
content_types = st.sampled_from([
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xYzZY",
    "multipart/form-data", "text/plain", "", "application/json; charset=utf-8",
])
form_bodies = st.dictionaries(
    st.sampled_from(["MessageSid", "From", "Body", "NumMedia", "MessageStatus", "Latitude", "Longitude",
                     "sender", "from", "timestamp", "token", "signature", "body-mime", "message-headers",
                     "MediaUrl0", "SmsStatus", "headers", "envelope"]),
    st.text(max_size=30), max_size=8,
).map(lambda d: urlencode(d).encode())
bodies = st.one_of(
    st.binary(max_size=300), json_values.map(_dumps), shaped.map(_dumps), form_bodies,
)
headers = st.dictionaries(
    st.sampled_from(["x-twilio-signature", "x-hub-signature-256", "webhook-id", "webhook-timestamp",
                     "webhook-signature", "authorization", "x-telegram-bot-api-secret-token", "content-length",
                     "x-forwarded-proto", "x-forwarded-host"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip), max_size=4,
)


@pytest.fixture(scope="module")
def inboxes(app_engine: Engine) -> dict[str, CreatedInbox]:
    return {channel: new_inbox(app_engine, channel) for channel in CHANNELS}


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_no_input_produces_a_server_error(server: str, inboxes: dict[str, CreatedInbox], channel: str) -> None:
    inbox = inboxes[channel]
    url = f"{server}/v1/webhooks/{channel}/{inbox.id}"
    client = httpx.Client(timeout=10)

    @fuzz_settings(150)
    @given(body=bodies, extra=headers, ctype=content_types, signed=st.booleans())
    def check(body: bytes, extra: dict[str, str], ctype: str, signed: bool) -> None:
        request_headers = {"content-type": ctype, **extra} if not signed else {}
        if signed:
            request_headers, body = sign(channel, inbox.secrets, url, body, ctype)
        request_headers.pop("content-length", None)
        response = client.post(url, content=body, headers=request_headers)
        assert response.status_code in (200, 400, 401, 413, 429), (response.status_code, response.text)
        data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200:
            assert set(data) == {"error", "detail"}

    try:
        check()
    finally:
        client.close()
    assert httpx.get(server + "/healthz").status_code == 200
