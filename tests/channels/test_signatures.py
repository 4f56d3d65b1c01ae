"""Signature checks per provider, computed from each provider's published algorithm."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from pipelines.channels import (
    SignatureError,
    VerifyContext,
    WebhookRequest,
    api,
    mailgun,
    postmark,
    telegram,
    twilio,
    whatsapp,
)
from tests.webhooks import basic

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CTX = VerifyContext(now=NOW, tolerance_seconds=300)


def request(body: bytes, headers: dict[str, str], url: str = "https://hooks.example.com/v1/x",
            alternates: tuple[str, ...] = ()) -> WebhookRequest:
    return WebhookRequest(method="POST", url=url, headers=headers, body=body, alternate_urls=alternates)


def twilio_reference(token: str, url: str, params: dict[str, str]) -> str:
    # Twilio's documented algorithm, written out independently of the adapter.
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


class TestTwilio:
    token = "12345"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}

    def form(self) -> bytes:
        return urlencode(self.params).encode()

    def test_form_post(self) -> None:
        url = "https://mycompany.com/myapp.php?foo=1&bar=2"
        sig = twilio_reference(self.token, url, self.params)
        twilio.verify(request(self.form(), {"content-type": "application/x-www-form-urlencoded",
                                            "x-twilio-signature": sig}, url), {"auth_token": self.token}, CTX)

    def test_tampered_param_fails(self) -> None:
        url = "https://mycompany.com/myapp.php"
        sig = twilio_reference(self.token, url, self.params)
        body = urlencode({**self.params, "Digits": "9999"}).encode()
        with pytest.raises(SignatureError):
            twilio.verify(request(body, {"content-type": "application/x-www-form-urlencoded",
                                         "x-twilio-signature": sig}, url), {"auth_token": self.token}, CTX)

    @pytest.mark.parametrize(("signed", "seen"), [
        ("https://mycompany.com:443/myapp", "https://mycompany.com/myapp"),
        ("https://mycompany.com/myapp", "https://mycompany.com:443/myapp"),
    ])
    def test_default_port_variants(self, signed: str, seen: str) -> None:
        sig = twilio_reference(self.token, signed, self.params)
        alternate = signed  # the ingress supplies the other spelling of the same URL
        req = request(self.form(), {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": sig},
                      seen, (alternate,))
        twilio.verify(req, {"auth_token": self.token}, CTX)

    def test_json_body_sha256(self) -> None:
        body = b'{"MessageSid": "SM1", "From": "+14155550101", "Body": "hi"}'
        url = "https://mycompany.com/myapp?bodySHA256=" + hashlib.sha256(body).hexdigest()
        sig = twilio_reference(self.token, url, {})
        twilio.verify(request(body, {"content-type": "application/json", "x-twilio-signature": sig}, url),
                      {"auth_token": self.token}, CTX)
        with pytest.raises(SignatureError):  # the URL is signed, but the body was changed
            twilio.verify(request(body.replace(b"hi", b"yo"),
                                  {"content-type": "application/json", "x-twilio-signature": sig}, url),
                          {"auth_token": self.token}, CTX)

    def test_missing_signature(self) -> None:
        with pytest.raises(SignatureError):
            twilio.verify(request(self.form(), {"content-type": "application/x-www-form-urlencoded"}),
                          {"auth_token": self.token}, CTX)


class TestMeta:
    secret = "meta-app-secret"

    def test_raw_bytes_with_escaped_unicode(self) -> None:
        # Meta sends (and signs) escaped unicode; a re-serialized body would not match.
        body = b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"messages":' \
               b'[{"text":{"body":"Gr\\u00fc\\u00df Gott \\ud83d\\ude00"}}]}}]}]}'
        sig = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        whatsapp.verify(request(body, {"x-hub-signature-256": sig}), {"app_secret": self.secret}, CTX)
        reserialized = json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")).encode()
        assert reserialized != body
        with pytest.raises(SignatureError):
            whatsapp.verify(request(reserialized, {"x-hub-signature-256": sig}), {"app_secret": self.secret}, CTX)

    def test_wrong_and_missing(self) -> None:
        with pytest.raises(SignatureError):
            whatsapp.verify(request(b"{}", {"x-hub-signature-256": "sha256=00"}), {"app_secret": self.secret}, CTX)
        with pytest.raises(SignatureError):
            whatsapp.verify(request(b"{}", {}), {"app_secret": self.secret}, CTX)

    def test_handshake(self) -> None:
        secrets = {"verify_token": "the-verify-token"}
        query = {"hub.mode": "subscribe", "hub.verify_token": "the-verify-token", "hub.challenge": "1158201444"}
        assert whatsapp.handshake(query, secrets) == "1158201444"
        with pytest.raises(SignatureError):
            whatsapp.handshake({**query, "hub.verify_token": "guess"}, secrets)


class TestMailgun:
    key = "key-mailgun-signing"

    def fields(self, timestamp: int, token: str = "a" * 50) -> bytes:
        sig = hmac.new(self.key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
        return urlencode({"sender": "a@b.co", "timestamp": str(timestamp), "token": token, "signature": sig}).encode()

    def test_fresh_signature(self) -> None:
        mailgun.verify(request(self.fields(int(NOW.timestamp())),
                               {"content-type": "application/x-www-form-urlencoded"}), {"signing_key": self.key}, CTX)

    def test_stale_timestamp(self) -> None:
        with pytest.raises(SignatureError):
            mailgun.verify(request(self.fields(int(NOW.timestamp()) - 3600),
                                   {"content-type": "application/x-www-form-urlencoded"}),
                           {"signing_key": self.key}, CTX)

    def test_replay_token_is_exposed_for_the_ingress(self) -> None:
        req = request(self.fields(int(NOW.timestamp()), token="t" * 50),
                      {"content-type": "application/x-www-form-urlencoded"})
        assert mailgun.replay_token(req) == "t" * 50


class TestStandardWebhooks:
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = "1614265330"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def ctx(self) -> VerifyContext:
        return VerifyContext(now=datetime.fromtimestamp(int(self.timestamp), tz=UTC), tolerance_seconds=300)

    def test_specification_example(self) -> None:
        assert api.signature(self.secret, self.msg_id, self.timestamp, self.body) == self.expected

    def test_several_signatures_one_valid(self) -> None:
        header = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= " + self.expected + " v2,unknown"
        api.verify(request(self.body, {"webhook-id": self.msg_id, "webhook-timestamp": self.timestamp,
                                       "webhook-signature": header}), {"signing_secret": self.secret}, self.ctx())

    def test_expired_and_future_timestamps(self) -> None:
        for offset in (-301, 301):
            ctx = VerifyContext(now=datetime.fromtimestamp(int(self.timestamp) + offset, tz=UTC))
            with pytest.raises(SignatureError):
                api.verify(request(self.body, {"webhook-id": self.msg_id, "webhook-timestamp": self.timestamp,
                                               "webhook-signature": self.expected}),
                           {"signing_secret": self.secret}, ctx)

    def test_signature_bound_to_id(self) -> None:
        with pytest.raises(SignatureError):
            api.verify(request(self.body, {"webhook-id": "msg_other", "webhook-timestamp": self.timestamp,
                                           "webhook-signature": self.expected}),
                       {"signing_secret": self.secret}, self.ctx())


def test_basic_auth_and_telegram_tokens() -> None:
    secrets = {"basic_user": "postmark", "basic_password": "s3cret-password-123"}
    postmark.verify(request(b"{}", {"authorization": basic("postmark", "s3cret-password-123")}), secrets, CTX)
    for header in (basic("postmark", "wrong"), basic("other", "s3cret-password-123"), "Basic !!!", ""):
        with pytest.raises(SignatureError):
            postmark.verify(request(b"{}", {"authorization": header}), secrets, CTX)
    telegram.verify(request(b"{}", {"x-telegram-bot-api-secret-token": "tg_secret"}), {"secret_token": "tg_secret"},
                    CTX)
    with pytest.raises(SignatureError):
        telegram.verify(request(b"{}", {"x-telegram-bot-api-secret-token": "tg_secreT"}),
                        {"secret_token": "tg_secret"}, CTX)
