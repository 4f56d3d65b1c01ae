"""Webhook endpoints through the admin API over real HTTP: the secret shown once and never cached, every
operation audited, safe targets only, hostile input refused field by field, and a tenant key kept to its own."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.changes import Change
from tests.admin_server import client, make_key, make_tenant

PUBLIC = "https://93.184.216.34/hooks/intake?token=abc"  # a public address: no DNS needed to check it


def send(c: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    """JSON as json.dumps writes it: a lone surrogate travels escaped, as a hostile client would send it."""
    return c.request(method, path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def create(op: httpx.Client, tenant: uuid.UUID, **body: Any) -> httpx.Response:
    return send(op, "POST", f"/v1/admin/tenants/{tenant}/webhook-endpoints", {"url": PUBLIC, **body})


def audit_rows(engine: Engine, subject: str) -> list[Any]:
    with engine.begin() as conn:
        return list(conn.execute(text("SELECT action, actor, before, after FROM audit_logs WHERE subject_id = :s "
                                      "ORDER BY created_at"), {"s": subject}))


def test_an_endpoint_is_created_shown_changed_and_deleted_with_an_audit_row_for_each(
        op: httpx.Client, admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine)
    created = create(op, tenant, event_types=["message.received", "conversation.resolved"],
                     description="CRM sync", rate_limit_per_second=50)
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    secret, endpoint = created.json()["secret"], created.json()["endpoint"]
    assert secret.startswith("whsec_") and len(secret) > 30
    assert endpoint["enabled"] is True and endpoint["failing_since"] is None
    assert endpoint["event_types"] == ["message.received", "conversation.resolved"]
    path = f"/v1/admin/webhook-endpoints/{endpoint['id']}"

    shown = op.get(path)
    listed = op.get(f"/v1/admin/tenants/{tenant}/webhook-endpoints").json()
    assert shown.json() == endpoint and listed["items"] == [endpoint]
    assert secret not in shown.text and secret not in str(listed)

    changed = op.patch(path, json={"description": "CRM", "enabled": False, "event_types": []}).json()
    assert (changed["description"], changed["enabled"], changed["event_types"]) == ("CRM", False, [])
    assert changed["disabled_at"] is not None and "disabled by" in changed["disabled_reason"]
    again = op.patch(path, json={"enabled": True}).json()
    assert again["enabled"] is True and again["disabled_at"] is None

    assert op.delete(path).json() == {"id": endpoint["id"], "deleted": True}
    assert op.get(path).status_code == 404
    rows = audit_rows(admin_engine, endpoint["id"])
    assert [r.action for r in rows] == ["webhook_endpoint.create", "webhook_endpoint.update",
                                       "webhook_endpoint.update", "webhook_endpoint.delete"]
    trail = orjson.dumps([[r.before, r.after] for r in rows]).decode()
    assert secret not in trail and "token=abc" not in trail  # neither the secret nor the URL's credentials


def test_a_rotation_shows_the_new_secret_once_and_keeps_the_old_one_for_the_overlap(
        op: httpx.Client, admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine)
    first = create(op, tenant).json()
    path = f"/v1/admin/webhook-endpoints/{first['endpoint']['id']}/rotate-secret"
    rotated = op.post(path, json={"overlap_seconds": 3600})
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != first["secret"]
    until = datetime.fromisoformat(rotated.json()["endpoint"]["previous_secret_until"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
    assert op.post(path, json={}).json()["endpoint"]["previous_secret_until"] is not None  # default: 24 h
    assert op.post(path, json={"overlap_seconds": 0}).json()["endpoint"]["previous_secret_until"] is None
    assert [r.action for r in audit_rows(admin_engine, first["endpoint"]["id"])][-1] == "webhook_endpoint.rotate_secret"


def test_recover_queues_the_events_since_a_time_and_attempts_are_paged(
        op: httpx.Client, admin_engine: Engine, app_engine: Engine) -> None:
    tenant = make_tenant(admin_engine)
    endpoint = create(op, tenant, event_types=["contact.created"]).json()["endpoint"]
    with app_engine.begin() as conn:
        bind_tenant(conn, TenantId(tenant))
        changes.record(conn, TenantId(tenant), [Change("contact.created", {"n": i}) for i in range(5)]
                       + [Change("sla.breached")])
    with app_engine.begin() as conn:  # planned as the deliverer plans, before recovery resets them
        from pipelines.webhooks.delivery import plan
        bind_tenant(conn, TenantId(tenant))
        assert plan(conn, TenantId(tenant), uuid.UUID(endpoint["id"])) == 5
    path = f"/v1/admin/webhook-endpoints/{endpoint['id']}"
    recovered = op.post(path + "/recover", json={"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()})
    assert recovered.json() == {"endpoint_id": endpoint["id"], "events": 5}
    assert op.post(path + "/recover", json={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
                   ).json()["events"] == 0
    page = op.get(path + "/attempts", params={"limit": 2}).json()
    assert [a["event_seq"] for a in page["items"]] == [5, 4] and page["next_offset"] == 2
    assert {a["event_type"] for a in page["items"]} == {"contact.created"}
    assert all(a["status"] == "pending" and a["attempts"] == 0 for a in page["items"])
    rest = op.get(path + "/attempts", params={"limit": 10, "offset": 2, "status": "pending"}).json()
    assert [a["event_seq"] for a in rest["items"]] == [3, 2, 1] and rest["next_offset"] is None
    assert op.get(path + "/attempts", params={"status": "delivered"}).json()["items"] == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://10.1.2.3/", "http://172.16.0.9/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://224.0.0.1/", "http://[::1]/", "http://[fe80::1]/", "http://[fd00:ec2::254]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a00:1]/",
    "http://[2002:7f00:1::]/", "http://2130706433/", "http://0x7f.1/",
    "ftp://93.184.216.34/", "file:///etc/passwd", "gopher://93.184.216.34/", "javascript:alert(1)",
    "http://user:pass@93.184.216.34/", "http:///no-host", "http://[::1", "http://93.184.216.34:99999/",
    "http://no-such-host.invalid/",
])
def test_a_url_that_is_not_a_safe_target_is_refused_on_url(op: httpx.Client, admin_engine: Engine,
                                                            url: str) -> None:
    tenant = make_tenant(admin_engine)
    response = create(op, tenant, url=url)
    assert response.status_code == 422, (url, response.text)
    assert list(response.json()["fields"]) == ["url"]
    endpoint = create(op, tenant).json()["endpoint"]  # and no change may point an endpoint there either
    changed = op.patch(f"/v1/admin/webhook-endpoints/{endpoint['id']}", json={"url": url})
    assert changed.status_code == 422 and list(changed.json()["fields"]) == ["url"]


DEEP: Any = {"a": 1}  # deeper than the JSON parser goes: refused as malformed
for _ in range(300):
    DEEP = [DEEP]
NESTED: Any = {"a": 1}  # deep, but parsed: refused as a wrong type
for _ in range(20):
    NESTED = [NESTED]

HOSTILE: dict[str, list[Any]] = {
    "url": [None, 123, "", "x" * 2100, "https://93.184.216.34/\x00", "https://93.184.216.34/\ud800",
            "https://93.184.216.34/a b", "https://93.184.216.34/\u202e\u200b", NESTED, DEEP, {"url": PUBLIC}],
    "event_types": ["message.received", ["message.exploded"], ["message.received", "message.received"],
                    ["message.received"] * 100, [["message.received"]], [None], ["\x00"], NESTED, DEEP],
    "description": [5, "\x00", "\ud800", "x" * 1001, NESTED, DEEP, ["a"]],
    "rate_limit_per_second": [0, -1, "5", 1.5, True, 10**12, NESTED, DEEP],
    "enabled": ["yes", 1, NESTED, DEEP],
}


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in HOSTILE.items() for v in values],
                         ids=lambda v: repr(v)[:40])
def test_hostile_values_on_every_field_are_refused_by_name(op: httpx.Client, admin_engine: Engine, field: str,
                                                           value: Any) -> None:
    tenant = make_tenant(admin_engine)
    endpoint = create(op, tenant).json()["endpoint"]
    attempts = [("POST", f"/v1/admin/tenants/{tenant}/webhook-endpoints", {"url": PUBLIC, field: value})]
    if not (field == "url" and value is None):  # null in a PATCH means "leave it"
        attempts.append(("PATCH", f"/v1/admin/webhook-endpoints/{endpoint['id']}", {field: value}))
    for method, path, body in attempts:
        if field == "enabled" and method == "POST":
            continue  # not a field of a new endpoint: refused as an extra field
        response = send(op, method, path, body)
        if value is DEEP or (isinstance(value, str) and "\ud800" in value):
            assert response.json()["error"] == "malformed_json"  # too deep, or a lone surrogate
            continue
        assert response.status_code == 422, response.text
        assert any(name.split(".")[0] == field for name in response.json()["fields"]), response.text
    assert op.get(f"/v1/admin/webhook-endpoints/{endpoint['id']}").json() == endpoint
    assert len(op.get(f"/v1/admin/tenants/{tenant}/webhook-endpoints").json()["items"]) == 1


@pytest.mark.parametrize(("action", "body", "field"), [
    ("rotate-secret", {"overlap_seconds": -1}, "overlap_seconds"),
    ("rotate-secret", {"overlap_seconds": 10**9}, "overlap_seconds"),
    ("rotate-secret", {"overlap_seconds": "60"}, "overlap_seconds"),
    ("rotate-secret", {"overlap_seconds": NESTED}, "overlap_seconds"),
    ("rotate-secret", {"secret": "whsec_mine"}, "secret"),
    ("recover", {}, "since"),
    ("recover", {"since": "yesterday"}, "since"),
    ("recover", {"since": "2026-01-01T00:00:00"}, "since"),  # no time zone
    ("recover", {"since": 1700000000.5}, "since"),
    ("recover", {"since": "2026-01-01T00:00:00Z\x00"}, "since"),
    ("recover", {"since": NESTED}, "since"),
])
def test_hostile_rotation_and_recovery_bodies_are_refused(op: httpx.Client, admin_engine: Engine, action: str,
                                                          body: dict[str, Any], field: str) -> None:
    endpoint = create(op, make_tenant(admin_engine)).json()["endpoint"]
    response = send(op, "POST", f"/v1/admin/webhook-endpoints/{endpoint['id']}/{action}", body)
    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]


def test_bodies_that_are_not_json_objects_or_too_large_are_refused(op: httpx.Client, admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine)
    path = f"/v1/admin/tenants/{tenant}/webhook-endpoints"
    assert op.post(path, content=b"{not json").status_code == 400
    assert op.post(path, content=b"[1, 2]").status_code == 422
    assert op.post(path, content=b"\xff\xfe").status_code == 400
    assert op.post(path, json={"url": PUBLIC, "description": "x" * 70_000}).status_code == 413
    assert op.post(path, json={"url": PUBLIC, "extra": 1}).json()["fields"] == {"extra": "Extra inputs are not "
                                                                                          "permitted"}
    assert op.get(f"/v1/admin/tenants/{tenant}/webhook-endpoints").json()["items"] == []


def test_a_tenant_key_reaches_only_its_own_endpoints(base: str, op: httpx.Client, admin_engine: Engine) -> None:
    mine, theirs = make_tenant(admin_engine), make_tenant(admin_engine)
    their_endpoint = create(op, theirs).json()["endpoint"]["id"]
    own = make_key(admin_engine, tenant_id=mine)
    with client(base, own) as tk:
        assert create(tk, mine).status_code == 201
        # Another tenant's ids answer as ids of nothing at all: 404, never 403.
        assert create(tk, theirs).status_code == 404
        assert tk.get(f"/v1/admin/tenants/{theirs}/webhook-endpoints").status_code == 404
        path = f"/v1/admin/webhook-endpoints/{their_endpoint}"
        for method, suffix, body in (("GET", "", None), ("PATCH", "", {"enabled": False}), ("DELETE", "", None),
                                     ("POST", "/rotate-secret", {}), ("GET", "/attempts", None),
                                     ("POST", "/recover", {"since": "2026-01-01T00:00:00Z"})):
            assert tk.request(method, path + suffix, json=body).status_code == 404, (method, suffix)
        assert tk.get(f"/v1/admin/webhook-endpoints/{uuid.uuid4()}").status_code == 404
    assert op.get(f"/v1/admin/webhook-endpoints/{their_endpoint}").json()["enabled"] is True


def test_the_console_lists_a_tenants_endpoints_with_their_state(base: str, op: httpx.Client,
                                                               admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine)
    healthy = create(op, tenant, description="Agent inbox").json()
    stopped = create(op, tenant, url="https://93.184.216.35/crm").json()["endpoint"]["id"]
    op.patch(f"/v1/admin/webhook-endpoints/{stopped}", json={"enabled": False})
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as console:
        form = console.get("/login").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert console.post("/login", data={"csrf": csrf, "key": make_key(admin_engine).key}).status_code == 303
        page = console.get(f"/tenants/{tenant}").text
    section = page.split("<h2>Webhook endpoints</h2>", 1)[1].split("<h2>", 1)[0]
    assert "https://93.184.216.34/hooks/intake" in section and "Agent inbox" in section
    assert "token=abc" not in section and healthy["secret"] not in page  # neither the URL's token nor the secret
    assert section.count('badge enabled">enabled') == 1 and section.count('badge disabled">disabled') == 1
    assert "disabled by" in section
