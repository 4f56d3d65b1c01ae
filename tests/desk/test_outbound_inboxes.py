"""An inbox's sending secrets and settings: optional, validated, encrypted, masked and rotatable."""

from __future__ import annotations

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

A = "/v1/admin"
BOT_TOKEN = "123456789:AAE-test-bot-token_0123456789abcd"


def new_tenant(op: httpx.Client) -> str:
    response = op.post(f"{A}/tenants", json={"name": "Senders"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_existing_inboxes_stay_valid_and_sending_secrets_are_encrypted_and_masked(
        op: httpx.Client, admin_engine: Engine) -> None:
    tenant = new_tenant(op)
    receive_only = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "telegram"})
    assert receive_only.status_code == 201 and set(receive_only.json()["secrets"]) == {"secret_token"}
    created = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "telegram", "secrets": {"bot_token": BOT_TOKEN}})
    assert created.status_code == 201, created.text
    inbox = created.json()["inbox"]
    assert created.json()["secrets"]["bot_token"] == BOT_TOKEN  # shown once, in full
    shown = op.get(f"{A}/inboxes/{inbox['id']}").json()
    assert shown["secrets"]["bot_token"] == "****abcd" and BOT_TOKEN not in orjson.dumps(shown).decode()
    with admin_engine.begin() as conn:
        stored = conn.execute(text("SELECT secrets FROM inboxes WHERE id = :i"), {"i": inbox["id"]}).scalar_one()
    assert BOT_TOKEN not in stored and "AAE-test" not in stored
    # A rotation generates the secret token anew and keeps the issued bot token unless a new one is given.
    rotated = op.post(f"{A}/inboxes/{inbox['id']}/rotate-secrets", json={"overlap_seconds": 0})
    assert rotated.json()["secrets"]["bot_token"] == BOT_TOKEN
    other = "987654321:BBF-another-bot-token_98765432"
    rotated = op.post(f"{A}/inboxes/{inbox['id']}/rotate-secrets", json={"secrets": {"bot_token": other}})
    assert rotated.status_code == 200 and rotated.json()["secrets"]["bot_token"] == other


def test_sending_settings_are_stored_as_given(op: httpx.Client) -> None:
    tenant = new_tenant(op)
    inbox = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "mailgun", "secrets": {
        "signing_key": "key-mailgun-signing", "api_key": "key-mailgun-sending-0123456789"}}).json()["inbox"]
    settings = {"domain": "MG.Example.com", "from_address": "support@help.example.com"}
    updated = op.patch(f"{A}/inboxes/{inbox['id']}", json={"settings": settings})
    assert updated.status_code == 200, updated.text
    assert updated.json()["settings"] == {"domain": "mg.example.com", "from_address": "support@help.example.com"}
    api = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api", "settings": {
        "reply_url": "https://crm.example.com/intake/replies?x=1"}})
    assert api.status_code == 201 and api.json()["inbox"]["settings"]["reply_url"].endswith("?x=1")


@pytest.mark.parametrize(("settings", "field"), [
    ({"reply_url": "javascript:alert(1)"}, "settings.reply_url"),
    ({"reply_url": "ftp://crm.example.com/replies"}, "settings.reply_url"),
    ({"reply_url": "https://user:pw@crm.example.com/"}, "settings.reply_url"),
    ({"reply_url": "https://crm.example.com/\x00"}, "settings.reply_url"),
    ({"reply_url": "https://crm.example.com/ä"}, "settings.reply_url"),
    ({"reply_url": "https://crm.example.com/" + "a" * 3000}, "settings.reply_url"),
    ({"reply_url": 12}, "settings.reply_url"),
    ({"reply_url": {"url": {"url": {"url": "https://x.example"}}}}, "settings.reply_url"),
    ({"from_address": "help@support.example.com\r\nBcc: all@example.com"}, "settings.from_address"),
    ({"from_address": "not an address"}, "settings.from_address"),
    ({"from_address": ["help@support.example.com"]}, "settings.from_address"),
    ({"phone_number_id": "1065-4035"}, "settings.phone_number_id"),
    ({"phone_number_id": 106540352242922}, "settings.phone_number_id"),
    ({"domain": "-bad-.example.com"}, "settings.domain"),
    ({"domain": "mg.example.com/../x"}, "settings.domain"),
])
def test_bad_sending_settings_are_422_naming_the_field(op: httpx.Client, settings: dict[str, object],
                                                       field: str) -> None:
    tenant = new_tenant(op)
    inbox = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api"}).json()["inbox"]
    response = op.patch(f"{A}/inboxes/{inbox['id']}", json={"settings": settings})
    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]
    assert op.get(f"{A}/inboxes/{inbox['id']}").json()["settings"] == {}  # nothing changed


@pytest.mark.parametrize(("channel", "secrets"), [
    ("telegram", {"bot_token": "no colon here at all, and spaces"}),
    ("telegram", {"bot_token": BOT_TOKEN + "\x00"}),
    ("twilio", {"auth_token": "twilio-auth-token", "account_sid": "AC123"}),
    ("whatsapp", {"app_secret": "meta-app-secret", "access_token": "short"}),
    ("whatsapp", {"app_secret": "meta-app-secret", "access_token": "tok en with spaces 0123456789"}),
    ("postmark", {"server_token": "ünïcödé-token-0123456789"}),
    ("sendgrid", {"api_key": "x" * 5000}),
    ("api", {"reply_url": "https://crm.example.com/"}),  # a setting, not a secret
])
def test_bad_sending_secrets_are_422(op: httpx.Client, channel: str, secrets: dict[str, str]) -> None:
    tenant = new_tenant(op)
    response = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": channel, "secrets": secrets})
    assert response.status_code == 422, response.text
    assert [f for f in response.json()["fields"] if f.split(".")[0] == "secrets"]  # secrets, or secrets.<name>
    assert op.get(f"{A}/tenants/{tenant}/inboxes").json()["items"] == []
