"""A tenant key reaches nothing of another tenant, on every endpoint the OpenAPI document lists: each
operation is called with the other tenant's ids (in the path, the query and the body) and must be refused
or, for lists, show none of the other tenant's rows; the other tenant's rows are unchanged afterwards.
A refusal is the answer to ids that exist nowhere, word for word (404 `no tenant <id>`), so no answer tells
a tenant key whether an id exists elsewhere; only what needs an operator key is a 403, whatever the ids.
An operation this test does not know how to call fails it, so a new endpoint cannot slip through."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, text

from tests.admin.test_admin_api import seed_failures
from tests.admin_server import admin_server, client, make_key

# A valid body for each request model, so that validation passes and tenancy is what is tested.
BODIES: dict[str, dict[str, Any]] = {
    "TenantCreate": {"name": "Intruder"},
    "TenantUpdate": {"name": "Taken over", "settings": {"default_language": "en"}},
    "InboxCreate": {"channel": "api"},
    "InboxUpdate": {"name": "Taken over"},
    "RotateSecrets": {"overlap_seconds": 0},
    "TeamCreate": {"name": "Intruders"},
    "TeamUpdate": {"name": "Taken over"},
    "PersonaCreate": {"name": "Intruder"},
    "PersonaUpdate": {"name": "Taken over"},
    "KeyCreate": {"name": "intruder"},
    "FailureAction": {"all": True},
    "Reprocess": {"status": "failed"},
    "EraseContact": {"identity": {"kind": "email", "value": "theirs@example.com"}},
    "ConfirmDelete": {},  # `confirm` is the other tenant's id, filled in by `call`
    "SlaPolicySet": {"first_response_minutes": 5},
    "ReplyCreate": {"text": "An intruder's reply", "send": True},
    "Assign": {"assignee": "intruder"},
    "DraftAccept": {"text": "An intruder's edit"},
    "DraftReject": {"reason": "intruder"},
    "Correction": {"category": "billing", "priority": "urgent"},
    "EndpointCreate": {"url": "https://93.184.216.34/intruder"},
    "EndpointUpdate": {"url": "https://93.184.216.34/intruder", "enabled": False},
    "RotateEndpointSecret": {"overlap_seconds": 0},
    "Recover": {"since": "2026-01-01T00:00:00Z"},
    "ExampleBatch": {"examples": [{"text": "An intruder's label", "category": "billing"}]},
    "ExampleFilter": {"source": "correction"},
}


def snapshot(engine: Engine, tenant: uuid.UUID) -> bytes:
    """Everything of one tenant the control plane can change, as bytes to compare."""
    queries = {
        "tenants": "SELECT name, settings, disabled_at FROM tenants WHERE id = :t",
        "inboxes": "SELECT id, name, settings, enabled, secrets, persona_id FROM inboxes WHERE tenant_id = :t",
        "teams": "SELECT id, name FROM teams WHERE tenant_id = :t",
        "personas": "SELECT id, name, is_default FROM ai_personas WHERE tenant_id = :t",
        "failures": "SELECT id, status FROM job_failures WHERE tenant_id = :t",
        "events": "SELECT id, status, enqueued_at FROM inbound_events WHERE tenant_id = :t",
        "keys": "SELECT id, revoked_at FROM api_keys WHERE tenant_id = :t",
        "audit": "SELECT count(*) FROM audit_logs WHERE tenant_id = :t",
        "contacts": "SELECT id, display_name, erased_at FROM contacts WHERE tenant_id = :t",
        "identities": "SELECT kind, value FROM contact_identities WHERE tenant_id = :t",
        "sla": "SELECT priority, first_response_minutes, updated_at FROM sla_policies WHERE tenant_id = :t",
        "conversations": "SELECT id, status, assignee, team_id, category, priority, awaiting_reply, updated_at "
                         "FROM conversations WHERE tenant_id = :t",
        "messages": "SELECT id, direction, status, content FROM messages WHERE tenant_id = :t",
        "drafts": "SELECT id, status, reply_id FROM ai_drafts WHERE tenant_id = :t",
        "corrections": "SELECT id, category, priority FROM ai_corrections WHERE tenant_id = :t",
        "examples": "SELECT id, category FROM ai_examples WHERE tenant_id = :t",
        "models": "SELECT version FROM ai_models WHERE tenant_id = :t",
        "documents": "SELECT id, source FROM knowledge_documents WHERE tenant_id = :t",
        "feed": "SELECT seq, type FROM change_events WHERE tenant_id = :t",
        "webhook_endpoints": "SELECT id, url, enabled, secret, previous_secret, updated_at FROM webhook_endpoints "
                             "WHERE tenant_id = :t",
        "webhook_attempts": "SELECT id, status, attempts FROM webhook_attempts WHERE tenant_id = :t",
    }
    with engine.begin() as conn:
        data = {name: [list(r) for r in conn.execute(text(q + " ORDER BY 1"), {"t": tenant})]
                for name, q in queries.items()}
    return orjson.dumps(data, default=str)


def test_a_tenant_key_reaches_nothing_of_another_tenant(stack: dict[str, str], admin_engine: Engine,
                                                        app_engine: Engine) -> None:
    with admin_server(stack) as base:
        operator = make_key(admin_engine)
        with client(base, operator) as op:
            mine = op.post("/v1/admin/tenants", json={"name": "Mine"}).json()["id"]
            theirs = op.post("/v1/admin/tenants", json={"name": "Theirs"}).json()["id"]
            inbox = op.post(f"/v1/admin/tenants/{theirs}/inboxes", json={"channel": "api"}).json()["inbox"]["id"]
            team = op.post(f"/v1/admin/tenants/{theirs}/teams", json={"name": "Theirs"}).json()["id"]
            persona = op.post(f"/v1/admin/tenants/{theirs}/personas", json={"name": "Theirs"}).json()["id"]
            failure = seed_failures(admin_engine, theirs, 1)[0]
            with app_engine.begin() as conn:
                conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": theirs})
                event = conn.execute(text(
                    "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, body, status) "
                    "VALUES (:t, :i, 'api', 'theirs', '\\x7b7d', 'failed') RETURNING id"),
                    {"t": theirs, "i": inbox}).scalar_one()
                contact = conn.execute(text("INSERT INTO contacts (tenant_id, display_name) VALUES (:t, 'Theirs') "
                                            "RETURNING id"), {"t": theirs}).scalar_one()
                conn.execute(text("INSERT INTO contact_identities (tenant_id, contact_id, kind, value) "
                                  "VALUES (:t, :c, 'email', 'theirs@example.com')"), {"t": theirs, "c": contact})
                conversation = conn.execute(text(
                    "INSERT INTO conversations (tenant_id, inbox_id, contact_id, awaiting_reply) "
                    "VALUES (:t, :i, :c, true) RETURNING id"), {"t": theirs, "i": inbox, "c": contact}).scalar_one()
                message = conn.execute(text(
                    "INSERT INTO messages (tenant_id, inbox_id, conversation_id, contact_id, direction, external_id, "
                    "content, sent_at) VALUES (:t, :i, :v, :c, 'inbound', 'theirs-1', 'Their words', now()) "
                    "RETURNING id"), {"t": theirs, "i": inbox, "v": conversation, "c": contact}).scalar_one()
                draft = conn.execute(text(
                    "INSERT INTO ai_drafts (tenant_id, message_id, conversation_id, prompt_version, content, "
                    "confidence, provider, model) VALUES (:t, :m, :v, 'v1', 'Their draft', 0.5, 'local', 'm') "
                    "RETURNING id"), {"t": theirs, "m": message, "v": conversation}).scalar_one()
                document = conn.execute(text(
                    "INSERT INTO knowledge_documents (tenant_id, source, title, content_hash, embedding_model, "
                    "embedding_dim) VALUES (:t, 'theirs.md', 'Theirs', 'x', 'm', 384) RETURNING id"),
                    {"t": theirs}).scalar_one()
            assert op.put(f"/v1/admin/tenants/{theirs}/sla-policies/normal",
                          json={"first_response_minutes": 60}).status_code == 200
            endpoint = op.post(f"/v1/admin/tenants/{theirs}/webhook-endpoints",
                               json={"url": "https://93.184.216.34/theirs"}).json()["endpoint"]["id"]
            their_key = make_key(admin_engine, tenant_id=uuid.UUID(theirs), name="theirs")
            with client(base, their_key) as them:  # a job of theirs: an export, with an archive to download
                job = them.post(f"/v1/admin/tenants/{theirs}/export").json()["id"]
            spec = op.get("/v1/admin/openapi.json").json()
        ids = {"tenant_id": theirs, "inbox_id": inbox, "team_id": team, "persona_id": persona,
               "failure_id": failure, "job_id": job, "key_id": str(their_key.key_id), "event_id": str(event),
               "conversation_id": str(conversation), "message_id": str(message), "draft_id": str(draft),
               "endpoint_id": endpoint, "document_id": str(document), "priority": "normal"}
        their_ids = [str(v) for k, v in ids.items() if k != "priority"]
        # The same kinds of ids, of nothing at all.
        nobodys = {k: (v if k == "priority" else str(uuid.uuid4())) for k, v in ids.items()}
        before = snapshot(admin_engine, uuid.UUID(theirs))
        key = make_key(admin_engine, tenant_id=uuid.UUID(mine))
        checked = 0
        with client(base, key) as tk:
            for path, operations in spec["paths"].items():
                for method, operation in operations.items():
                    checked += 1
                    # Naming the other tenant in filters, and naming none (the key's own tenant is meant).
                    for name_tenant in (True, False):
                        response = call(tk, method, path, operation, ids, name_tenant)
                        where = f"{method.upper()} {path}"
                        assert response.status_code < 500, where
                        if response.status_code < 300:
                            assert "{" not in path, f"{where} acted on another tenant's id"
                            assert not any(i in response.text for i in their_ids), f"{where} showed another tenant"
                            continue
                        body = response.json()
                        if response.status_code == 403:  # before any id is looked at
                            assert body["detail"] == "this needs an operator key", (where, body)
                        else:
                            assert response.status_code == 404, (where, response.text)
                        nowhere = call(tk, method, path, operation, nobodys, name_tenant)
                        assert (nowhere.status_code, unnamed(nowhere.json(), nobodys)) == (
                            response.status_code, unnamed(body, ids)), f"{where} tells their ids from nobody's"
            assert tk.post(f"/v1/admin/tenants/{mine}/delete", json={"confirm": mine}).status_code == 403
        assert checked == sum(len(ops) for ops in spec["paths"].values()) >= 30
        assert snapshot(admin_engine, uuid.UUID(theirs)) == before


def unnamed(body: dict[str, Any], ids: dict[str, str]) -> str:
    """An error body with the ids it was asked about replaced by their kinds, to compare two answers."""
    text = orjson.dumps(body).decode()
    for kind, value in ids.items():
        text = text.replace(str(value), kind)
    return text


def call(tk: httpx.Client, method: str, path: str, operation: dict[str, Any], ids: dict[str, str],
         name_tenant: bool) -> httpx.Response:
    url = path
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    for param in operation.get("parameters", []):
        if param["in"] == "header":
            assert param["name"] == "Idempotency-Key", f"no test value for the header {param['name']} in {path}"
            headers[param["name"]] = f"isolation-{uuid.uuid4()}"
        elif param["in"] == "path":
            assert param["name"] in ids, f"no id of another tenant for {param['name']} in {path}"
            url = url.replace("{" + param["name"] + "}", ids[param["name"]])
        elif param["name"] == "tenant_id" and name_tenant:
            params["tenant_id"] = ids["tenant_id"]
    body = None
    if "requestBody" in operation:
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[-1]
        assert name in BODIES, f"no test body for {name} ({method.upper()} {path})"
        body = dict(BODIES[name])
        if name in ("FailureAction", "Reprocess", "KeyCreate") and name_tenant:
            body["tenant_id"] = ids["tenant_id"]
        if name == "ConfirmDelete":
            body["confirm"] = ids["tenant_id"]
    return tk.request(method.upper(), url, params=params, json=body, headers=headers)
