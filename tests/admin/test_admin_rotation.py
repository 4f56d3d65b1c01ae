"""Secret rotation and disabling, seen from the ingress (`intake serve`): during the overlap both the old and
the new secrets verify, after it only the new; a disabled inbox or tenant answers 404. The overlap's end is
moved by setting the stored expiry, and the ingress's inbox cache is off, so nothing waits on a clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.admin_server import admin_server, client, make_key
from tests.processes import web_server
from tests.webhooks import fixture, sign

A = "/v1/admin"
BODIES = {"api": "api/message.json", "postmark": "postmark/inbound.json", "telegram": "telegram/message.json",
          "twilio": "twilio/sms_inbound.form"}


@pytest.fixture(scope="module")
def ingress(stack: dict[str, str]) -> Iterator[str]:
    with web_server({"INTAKE_INBOX_CACHE_SECONDS": "0", "INTAKE_RATE_LIMIT_PER_SECOND": "10000",
                     "INTAKE_RATE_LIMIT_BURST": "10000", "INTAKE_CLIENT_ERROR_BURST": "10000"}) as base:
        yield base


@pytest.fixture(scope="module")
def op(stack: dict[str, str], admin_engine: Engine) -> Iterator[httpx.Client]:
    with admin_server(stack) as base, client(base, make_key(admin_engine)) as c:
        yield c


def deliver(ingress: str, channel: str, inbox_id: str, secrets: dict[str, str]) -> int:
    body, ctype = fixture(BODIES[channel])
    url = f"{ingress}/v1/webhooks/{channel}/{inbox_id}"
    # A repeated delivery is acknowledged as a duplicate: only the signature decides the answer here.
    headers, body = sign(channel, secrets, url, body, ctype, webhook_id=f"msg_{uuid.uuid4().hex}")
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def end_overlap(engine: Engine, inbox_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE inboxes SET previous_secrets_until = now() - interval '1 second' WHERE id = :i"),
                     {"i": inbox_id})


@pytest.mark.parametrize("channel", ["api", "postmark", "telegram", "twilio"])
def test_old_secrets_verify_during_the_overlap_and_not_after(ingress: str, op: httpx.Client, admin_engine: Engine,
                                                             channel: str) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Rotating"}).json()["id"]
    given = {"auth_token": "twilio-auth-token-one"} if channel == "twilio" else {}
    created = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": channel, "secrets": given}).json()
    inbox, old = created["inbox"]["id"], created["secrets"]
    assert deliver(ingress, channel, inbox, old) == 200

    new_given = {"auth_token": "twilio-auth-token-two"} if channel == "twilio" else {}
    rotated = op.post(f"{A}/inboxes/{inbox}/rotate-secrets", json={"overlap_seconds": 3600, "secrets": new_given})
    new = rotated.json()["secrets"]
    assert new != old
    assert deliver(ingress, channel, inbox, new) == 200
    assert deliver(ingress, channel, inbox, old) == 200  # the overlap: both verify

    end_overlap(admin_engine, inbox)
    assert deliver(ingress, channel, inbox, old) == 401
    assert deliver(ingress, channel, inbox, new) == 200


def test_rotation_without_overlap_stops_the_old_secret_at_once(ingress: str, op: httpx.Client) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Rotating"}).json()["id"]
    created = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api"}).json()
    new = op.post(f"{A}/inboxes/{created['inbox']['id']}/rotate-secrets", json={"overlap_seconds": 0}).json()
    assert deliver(ingress, "api", created["inbox"]["id"], created["secrets"]) == 401
    assert deliver(ingress, "api", created["inbox"]["id"], new["secrets"]) == 200


def test_disabled_inboxes_and_tenants_answer_404(ingress: str, op: httpx.Client) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Disabled soon"}).json()["id"]
    created = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api"}).json()
    inbox, secrets = created["inbox"]["id"], created["secrets"]
    op.post(f"{A}/inboxes/{inbox}/disable")
    assert deliver(ingress, "api", inbox, secrets) == 404
    op.post(f"{A}/inboxes/{inbox}/enable")
    assert deliver(ingress, "api", inbox, secrets) == 200
    op.post(f"{A}/tenants/{tenant}/disable")
    assert deliver(ingress, "api", inbox, secrets) == 404
    op.post(f"{A}/tenants/{tenant}/enable")
    assert deliver(ingress, "api", inbox, secrets) == 200
