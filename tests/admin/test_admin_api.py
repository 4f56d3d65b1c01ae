"""The admin API over real HTTP against real PostgreSQL: each endpoint's happy path and its refusals."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

from tests.admin_server import Keyed, client, make_key
from tests.processes import wait_for

A = "/v1/admin"


def new_tenant(op: httpx.Client, name: str = "Acme") -> str:
    response = op.post(f"{A}/tenants", json={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def audit_rows(engine: Engine, subject_id: str) -> list[dict[str, object]]:
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT * FROM audit_logs WHERE subject_id = :s ORDER BY created_at"),
                            {"s": subject_id}).mappings().all()
    return [dict(r) for r in rows]


def test_tenants_create_list_show_update_disable_enable(op: httpx.Client, admin_engine: Engine) -> None:
    created = op.post(f"{A}/tenants", json={"name": "Acme Oy", "settings": {
        "default_language": "fi", "default_region": "fi", "ai": {"monthly_budget_usd": 20}}})
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["settings"] == {"default_language": "fi", "default_region": "FI", "ai": {"monthly_budget_usd": 20.0}}
    assert created.headers["x-request-id"]

    shown = op.get(f"{A}/tenants/{tenant['id']}").json()
    assert shown == tenant
    listed = op.get(f"{A}/tenants", params={"limit": 500}).json()
    assert tenant["id"] in [t["id"] for t in listed["items"]]

    updated = op.patch(f"{A}/tenants/{tenant['id']}", json={
        "name": "Acme Ltd", "settings": {"taxonomy": [{"id": "billing", "team": "Billing"}], "default_region": None}})
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["name"] == "Acme Ltd"
    assert "default_region" not in body["settings"] and body["settings"]["default_language"] == "fi"
    assert body["settings"]["taxonomy"][0]["id"] == "billing"

    assert op.post(f"{A}/tenants/{tenant['id']}/disable").json()["disabled"] is True
    assert op.post(f"{A}/tenants/{tenant['id']}/enable").json()["disabled"] is False

    actions = [r["action"] for r in audit_rows(admin_engine, tenant["id"])]
    assert actions == ["tenant.create", "tenant.update", "tenant.disable", "tenant.enable"]
    update_row = audit_rows(admin_engine, tenant["id"])[1]
    assert update_row["before"]["name"] == "Acme Oy" and update_row["after"]["name"] == "Acme Ltd"  # type: ignore[index]
    assert update_row["actor"] == "key:operator in tests" and update_row["request_id"]


@pytest.mark.parametrize(("settings", "field"), [
    ({"ai": {"monthly_budget_usd": -1}}, "settings.ai.monthly_budget_usd"),
    ({"default_language": "finnish"}, "settings.default_language"),
    ({"default_region": "Finland"}, "settings.default_region"),
    ({"reopen_window_hours": "soon"}, "settings.reopen_window_hours"),
    ({"ai": {"provider": "skynet"}}, "settings.ai.provider"),
    ({"taxonomy": [{"id": "Bad Id!"}]}, "settings.taxonomy.0.id"),
    ({"nonsense": 1}, "settings.nonsense"),
])
def test_invalid_settings_are_422_naming_the_field(op: httpx.Client, settings: dict[str, object], field: str) -> None:
    tenant = new_tenant(op)
    response = op.patch(f"{A}/tenants/{tenant}", json={"settings": settings})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid" and field in body["fields"], body
    assert op.get(f"{A}/tenants/{tenant}").json()["settings"] == {}  # nothing changed


def test_inbox_lifecycle_masks_secrets_and_audits_without_them(op: httpx.Client, admin_engine: Engine) -> None:
    tenant = new_tenant(op)
    created = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "postmark", "name": "Support mail"})
    assert created.status_code == 201, created.text
    inbox, secrets = created.json()["inbox"], created.json()["secrets"]
    password = secrets["basic_password"]
    assert password in created.json()["webhook_url"]  # shown once, in full
    shown = op.get(f"{A}/inboxes/{inbox['id']}").json()
    assert password not in orjson.dumps(shown).decode()
    assert shown["secrets"]["basic_password"].startswith("****")
    assert "****@" in shown["webhook_url"]
    assert [i["id"] for i in op.get(f"{A}/tenants/{tenant}/inboxes").json()["items"]] == [inbox["id"]]
    assert [i["id"] for i in op.get(f"{A}/inboxes", params={"tenant_id": tenant}).json()["items"]] == [inbox["id"]]

    updated = op.patch(f"{A}/inboxes/{inbox['id']}", json={"name": "Mail", "settings": {"rate_limit_burst": 10}})
    assert updated.json()["name"] == "Mail" and updated.json()["settings"] == {"rate_limit_burst": 10}
    assert op.post(f"{A}/inboxes/{inbox['id']}/disable").json()["enabled"] is False
    assert op.post(f"{A}/inboxes/{inbox['id']}/enable").json()["enabled"] is True
    rotated = op.post(f"{A}/inboxes/{inbox['id']}/rotate-secrets", json={"overlap_seconds": 3600})
    assert rotated.status_code == 200
    new_password = rotated.json()["secrets"]["basic_password"]
    assert new_password != password and rotated.json()["inbox"]["previous_secrets_until"]

    rows = audit_rows(admin_engine, inbox["id"])
    assert [r["action"] for r in rows] == ["inbox.create", "inbox.update", "inbox.disable", "inbox.enable",
                                           "inbox.rotate_secrets"]
    dumped = orjson.dumps(rows, default=str).decode()
    assert password not in dumped and new_password not in dumped and "****" not in dumped


def test_inbox_refusals(op: httpx.Client) -> None:
    tenant = new_tenant(op)
    missing = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "twilio"})
    assert missing.status_code == 422 and "secrets" in missing.json()["fields"]
    bad_channel = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "fax"})
    assert bad_channel.status_code == 422 and "channel" in bad_channel.json()["fields"]
    persona = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api", "persona_id": str(uuid.uuid4())})
    assert persona.status_code == 422 and "persona_id" in persona.json()["fields"]
    assert op.get(f"{A}/inboxes/{uuid.uuid4()}").status_code == 404
    assert op.get(f"{A}/inboxes/not-a-uuid").json()["error"] == "not_found"
    assert op.post(f"{A}/tenants/{uuid.uuid4()}/inboxes", json={"channel": "api"}).status_code == 404


def test_teams_and_personas(op: httpx.Client, admin_engine: Engine) -> None:
    tenant = new_tenant(op)
    team = op.post(f"{A}/tenants/{tenant}/teams", json={"name": "Billing", "keywords": ["invoice"]})
    assert team.status_code == 201
    assert op.post(f"{A}/tenants/{tenant}/teams", json={"name": "Billing"}).status_code == 409
    team_id = team.json()["id"]
    assert op.patch(f"{A}/teams/{team_id}", json={"description": "Money"}).json()["description"] == "Money"
    assert [t["name"] for t in op.get(f"{A}/tenants/{tenant}/teams").json()["items"]] == ["Billing"]
    assert op.delete(f"{A}/teams/{team_id}").json() == {"id": team_id, "deleted": True}
    assert op.get(f"{A}/teams/{team_id}").status_code == 404

    first = op.post(f"{A}/tenants/{tenant}/personas", json={"name": "Aino", "tone": "warm", "is_default": True,
                                                            "language": "fi", "temperature": 0.3})
    assert first.status_code == 201, first.text
    second = op.post(f"{A}/tenants/{tenant}/personas", json={"name": "Bob", "is_default": True}).json()
    assert op.get(f"{A}/personas/{first.json()['id']}").json()["is_default"] is False  # one default per tenant
    assert op.post(f"{A}/tenants/{tenant}/personas", json={"name": "Bob"}).status_code == 409
    bad = op.post(f"{A}/tenants/{tenant}/personas", json={"name": "X", "temperature": 3})
    assert bad.status_code == 422 and "temperature" in bad.json()["fields"]
    inbox = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api", "persona_id": second["id"]}).json()
    assert inbox["inbox"]["persona_id"] == second["id"]
    assert op.patch(f"{A}/personas/{second['id']}", json={"tone": "crisp"}).json()["tone"] == "crisp"
    assert op.delete(f"{A}/personas/{second['id']}").status_code == 200
    assert op.get(f"{A}/inboxes/{inbox['inbox']['id']}").json()["persona_id"] is None
    actions = {r["action"] for r in audit_rows(admin_engine, team_id) + audit_rows(admin_engine, second["id"])}
    assert actions == {"team.create", "team.update", "team.delete", "persona.create", "persona.update",
                       "persona.delete"}


def test_defaults_made_at_once_take_turns(op: httpx.Client, base: str, operator: Keyed) -> None:
    """Personas created as the default at the same moment all succeed; the last one is the default."""
    tenant = new_tenant(op)
    assert op.post(f"{A}/tenants/{tenant}/personas", json={"name": "Old", "is_default": True}).status_code == 201

    def create(n: int) -> int:
        with client(base, operator) as own:
            return own.post(f"{A}/tenants/{tenant}/personas", json={"name": f"P{n}", "is_default": True}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(create, range(8)))
    assert statuses == [201] * 8
    listed = op.get(f"{A}/tenants/{tenant}/personas", params={"limit": 50}).json()["items"]
    assert len(listed) == 9 and sum(p["is_default"] for p in listed) == 1


def test_wrong_missing_and_revoked_keys_get_one_401(base: str, op: httpx.Client, admin_engine: Engine) -> None:
    revoked = make_key(admin_engine, name="soon revoked")
    assert op.post(f"{A}/keys/{revoked.key_id}/revoke").status_code == 200
    answers = []
    for headers in ({}, {"authorization": "Bearer ik_wrong"}, {"authorization": "Basic abc"},
                    {"authorization": revoked.headers["Authorization"]},
                    {"authorization": revoked.headers["Authorization"][:-1] + "x"}):
        response = httpx.get(f"{base}{A}/tenants", headers=headers)
        answers.append((response.status_code, response.json(), response.headers.get("www-authenticate")))
    assert all(a == answers[0] for a in answers) and answers[0][0] == 401


def test_keys_over_the_api(op: httpx.Client, base: str, admin_engine: Engine) -> None:
    tenant = new_tenant(op)
    created = op.post(f"{A}/keys", json={"name": "crm", "tenant_id": tenant})
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("ik_") and len(secret) >= 46
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {secret}"}) as tk:
        assert [t["id"] for t in tk.get(f"{A}/tenants").json()["items"]] == [tenant]
        assert tk.post(f"{A}/keys", json={"name": "x"}).status_code == 403
    with admin_engine.begin() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix, last_used_at FROM api_keys WHERE id = :i"),
                              {"i": created.json()["key"]["id"]}).one()
    assert secret.encode() not in bytes(stored.key_hash) and secret.startswith(stored.prefix)
    assert stored.last_used_at is not None
    assert op.post(f"{A}/keys", json={"name": "x", "tenant_id": str(uuid.uuid4())}).status_code == 404


def test_a_tenant_key_finds_no_other_tenant(base: str, op: httpx.Client, admin_engine: Engine) -> None:
    """Another tenant's ids answer as ids that do not exist (the full walk is in test_admin_isolation)."""
    mine, theirs = new_tenant(op, "Mine"), new_tenant(op, "Theirs")
    their_inbox = op.post(f"{A}/tenants/{theirs}/inboxes", json={"channel": "api"}).json()["inbox"]["id"]
    key = make_key(admin_engine, tenant_id=uuid.UUID(mine))
    with client(base, key) as tk:
        assert tk.get(f"{A}/tenants/{theirs}").json() == {"error": "not_found", "detail": f"no tenant {theirs}"}
        assert tk.get(f"{A}/inboxes/{their_inbox}").json() == {"error": "not_found",
                                                                "detail": f"no inbox {their_inbox}"}
        assert tk.get(f"{A}/inboxes", params={"tenant_id": theirs}).status_code == 404
        assert tk.post(f"{A}/tenants/{mine}/disable").status_code == 403  # operators disable tenants
        own = tk.post(f"{A}/tenants/{mine}/inboxes", json={"channel": "telegram"})
        assert own.status_code == 201
        assert [i["tenant_id"] for i in tk.get(f"{A}/inboxes").json()["items"]] == [mine]
        audit = tk.get(f"{A}/audit").json()["items"]
        assert audit and {row["tenant_id"] for row in audit} == {mine}


@pytest.mark.parametrize(("body", "status"), [
    (b'{"name": "a\\u0000b"}', 422),
    (b'{"name": "\\ud800"}', 400),  # a lone surrogate is not JSON to the parser
    (b'{"name": 5}', 422),
    (b'{"name": ["x"]}', 422),
    (b'[1, 2]', 422),
    (b'"just a string"', 422),
    (b'{"name": "x", "settings": ' + b'{"ai": ' * 200 + b'{}' + b'}' * 201, 400),  # past the parser's depth
    (b'[' * 100_000 + b']' * 100_000, 413),
    (b'{"name": "' + b'x' * 70_000 + b'"}', 413),
    (b'{"name": "' + b'x' * 300 + b'"}', 422),
    (b"not json", 400),
    (b'{"name": "x", "settings": {"reopen_window_hours": NaN}}', 422),
    (b'{"name": "x", "settings": {"reopen_window_hours": 1e400}}', 422),
])
def test_hostile_bodies_get_a_clear_4xx(op: httpx.Client, body: bytes, status: int) -> None:
    response = op.post(f"{A}/tenants", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert set(response.json()) >= {"error", "detail"}


def test_hostile_query_and_headers(op: httpx.Client) -> None:
    assert op.get(f"{A}/tenants", params={"limit": "-1"}).status_code == 422
    assert op.get(f"{A}/tenants", params={"limit": "x" * 10_000}).status_code == 422
    assert op.get(f"{A}/audit", params={"action": "a\x00b"}).status_code == 422
    assert op.get(f"{A}/events", params={"since": "yesterday"}).status_code == 422
    odd = op.get(f"{A}/tenants", headers={"x-request-id": "bad id with spaces"})
    assert odd.status_code == 200 and " " not in odd.headers["x-request-id"]


def seed_failures(engine: Engine, tenant: str, count: int) -> list[str]:
    ids = []
    with engine.begin() as conn:
        for n in range(count):
            message = {"queue_name": "maintenance", "actor_name": "noop_for_tests", "args": [], "kwargs": {},
                       "options": {}, "message_id": uuid.uuid4().hex}
            ids.append(str(conn.execute(text(
                "INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, exception_type, "
                "exception_message, last_failed_at) VALUES (:t, 'maintenance', 'noop_for_tests', :m, "
                "CAST(:msg AS jsonb), 'ValueError', :e, now() - interval '1 minute') RETURNING id"),
                {"t": tenant, "m": message["message_id"], "msg": orjson.dumps(message).decode(),
                 "e": f"failure {n}"}).scalar_one()))
    return ids


def test_failures_list_show_replay_discard_as_jobs(op: httpx.Client, admin_engine: Engine) -> None:
    tenant = new_tenant(op)
    ids = seed_failures(admin_engine, tenant, 6)
    listed = op.get(f"{A}/failures", params={"tenant_id": tenant, "limit": 4}).json()
    assert len(listed["items"]) == 4 and listed["next_offset"] == 4
    shown = op.get(f"{A}/failures/{ids[0]}").json()
    assert shown["message"]["actor_name"] == "noop_for_tests" and shown["status"] == "dead"

    dry = op.post(f"{A}/failures/discard", json={"tenant_id": tenant, "dry_run": True})
    assert dry.status_code == 202 and dry.json()["total"] == 6 and dry.json()["status"] == "succeeded"
    assert op.get(f"{A}/failures", params={"tenant_id": tenant, "status": "dead"}).json()["next_offset"] is None
    assert len(op.get(f"{A}/failures", params={"tenant_id": tenant, "status": "dead"}).json()["items"]) == 6

    discard = op.post(f"{A}/failures/discard", json={"ids": ids[:2]}).json()
    wait_for(lambda: op.get(f"{A}/jobs/{discard['id']}").json()["status"] == "succeeded", timeout=20)
    assert op.get(f"{A}/jobs/{discard['id']}").json()["done"] == 2

    replay = op.post(f"{A}/failures/replay", json={"tenant_id": tenant}).json()
    wait_for(lambda: op.get(f"{A}/jobs/{replay['id']}").json()["status"] == "succeeded", timeout=20)
    assert op.get(f"{A}/jobs/{replay['id']}").json()["done"] == 4
    statuses = [f["status"] for f in op.get(f"{A}/failures", params={"tenant_id": tenant}).json()["items"]]
    assert sorted(statuses) == ["discarded"] * 2 + ["replayed"] * 4
    assert op.post(f"{A}/failures/replay", json={}).status_code == 422
    assert op.get(f"{A}/jobs/{uuid.uuid4()}").status_code == 404
    assert {r["action"] for r in audit_rows(admin_engine, discard["id"]) + audit_rows(admin_engine, replay["id"])} \
        == {"failures.discard", "failures.replay"}


def test_a_slow_replay_shows_progress_and_can_be_cancelled(op: httpx.Client, admin_engine: Engine) -> None:
    tenant = new_tenant(op)
    seed_failures(admin_engine, tenant, 40)
    job = op.post(f"{A}/failures/replay", json={"tenant_id": tenant, "rate": 20}).json()
    assert job["total"] == 40 and job["status"] == "running"
    wait_for(lambda: op.get(f"{A}/jobs/{job['id']}").json()["done"] > 0, timeout=20)
    assert op.post(f"{A}/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    wait_for(lambda: op.get(f"{A}/jobs/{job['id']}").json()["status"] == "cancelled", timeout=20)
    assert op.get(f"{A}/jobs/{job['id']}").json()["done"] < 40
    assert op.post(f"{A}/jobs/{job['id']}/cancel").status_code == 409


def test_events_list_and_reprocess(op: httpx.Client, admin_engine: Engine, app_engine: Engine) -> None:
    from tests.factories import new_inbox

    inbox = new_inbox(app_engine, "api")
    with app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(inbox.tenant_id)})
        conn.execute(text("INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body, status) "
                          "VALUES (:t, :i, 'api', 'k1', '\\x7b7d', 'failed')"), {"t": inbox.tenant_id, "i": inbox.id})
    listed = op.get(f"{A}/events", params={"tenant_id": str(inbox.tenant_id)}).json()
    assert [e["status"] for e in listed["items"]] == ["failed"]
    assert op.post(f"{A}/events/reprocess", json={}).status_code == 422
    dry = op.post(f"{A}/events/reprocess", json={"tenant_id": str(inbox.tenant_id), "dry_run": True}).json()
    assert dry["total"] == 1 and dry["done"] == 0
    job = op.post(f"{A}/events/reprocess", json={"tenant_id": str(inbox.tenant_id)}).json()
    wait_for(lambda: op.get(f"{A}/jobs/{job['id']}").json()["status"] == "succeeded", timeout=20)
    assert op.get(f"{A}/jobs/{job['id']}").json()["done"] == 1


def test_audit_filters(op: httpx.Client) -> None:
    tenant = new_tenant(op)
    op.patch(f"{A}/tenants/{tenant}", json={"name": "Renamed"})
    rows = op.get(f"{A}/audit", params={"tenant_id": tenant, "action": "tenant"}).json()["items"]
    assert [r["action"] for r in rows] == ["tenant.update", "tenant.create"]
    only = op.get(f"{A}/audit", params={"tenant_id": tenant, "action": "tenant.update"}).json()["items"]
    assert len(only) == 1
    later = op.get(f"{A}/audit", params={"tenant_id": tenant, "since": "2999-01-01T00:00:00Z"}).json()
    assert later["items"] == []


def test_unknown_routes_and_methods_keep_the_error_body(op: httpx.Client) -> None:
    assert op.get(f"{A}/nothing").json()["error"] == "not_found"
    # HEAD is GET without the body: a key is needed for it too.
    assert op.head(f"{A}/tenants").status_code == 200 and op.head(f"{A}/tenants").content == b""
    assert httpx.head(f"{op.base_url}{A}/jobs/{uuid.uuid4()}").status_code == 401
    assert op.put(f"{A}/tenants").json()["error"] == "method_not_allowed"
