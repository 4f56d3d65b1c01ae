"""The data lifecycle through the admin API, over real HTTP against real PostgreSQL and Redis: erasure of one
person, storage figures, tenant export (a job, then a download) and deletion (a job), SLA policies; and what
each refuses (no key, another tenant's key, unknown ids, invalid fields, hostile bodies)."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy import Engine, text

from db.tenancy import TenantId
from pipelines.control.errors import Conflict, NotFound
from pipelines.control.keys import Principal
from pipelines.crypto import SecretBox
from pipelines.lifecycle.tables import tenant_tables
from tests.admin_server import admin_server, client, make_key
from tests.factories import new_inbox, seed_tenant
from tests.lifecycle.test_erasure import ERIK, ERIK_TEXTS, enqueue, send
from tests.processes import wait_for
from workers.admin.background import KEEP_SECONDS, Jobs
from workers.queues import NAMESPACE

A = "/v1/admin"


def tenant_of(app_engine: Engine, name: str) -> TenantId:
    """A tenant with a row in every table (its ledger row settled, so no replay elsewhere takes it up)."""
    with app_engine.begin() as conn:
        tenant = seed_tenant(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), name).tenant_id
        conn.execute(text("UPDATE job_failures SET status = 'discarded' WHERE tenant_id = :t"), {"t": tenant})
    return tenant


def rows_of(admin_engine: Engine, tenant: uuid.UUID) -> dict[str, int]:
    with admin_engine.connect() as conn:
        return {t.name: conn.execute(text(f'SELECT count(*) FROM "{t.name}" WHERE '
                                          f'{"id" if t.name == "tenants" else "tenant_id"} = :t'),
                                     {"t": tenant}).scalar_one() for t in tenant_tables()}


def actions(admin_engine: Engine, subject: object) -> list[tuple[str, Any]]:
    with admin_engine.connect() as conn:
        return [(r.action, r.actor) for r in conn.execute(text(
            "SELECT action, actor FROM audit_logs WHERE subject_id = :s ORDER BY created_at"), {"s": str(subject)})]


def finished(c: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    wait_for(lambda: c.get(f"{A}/jobs/{job['id']}").json()["status"] != "running", timeout=60)
    view: dict[str, Any] = c.get(f"{A}/jobs/{job['id']}").json()
    return view


# -- erasure -----------------------------------------------------------------------------------------------
def test_a_tenant_key_erases_a_person_of_its_own_tenant_and_jobs_in_redis(
    base: str, op: httpx.Client, app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    erik = [m for n, t in enumerate(ERIK_TEXTS) for m in send(app_engine, inbox, f"e{n}", t, **ERIK).messages_created]
    send(app_engine, inbox, "a1", "Tilaukseni on myöhässä", email="anna@example.fi")
    waiting = enqueue(redis_client, "ai", tenant, erik)
    key = make_key(admin_engine, tenant_id=tenant, name="crm")
    path = f"{A}/tenants/{tenant}/erase-contact"
    with client(base, key) as tk:
        erased = tk.post(path, json={"identity": {"kind": "email", "value": ERIK["email"].upper()}})
        assert erased.status_code == 200, erased.text
        summary = erased.json()
        assert summary["already_erased"] is False and summary["counts"]["messages"] == 2 and summary["jobs"] == 1
        assert redis_client.hget(f"{NAMESPACE}:ai.msgs", waiting) is None
        with admin_engine.connect() as conn:
            texts = conn.execute(text("SELECT content FROM messages WHERE tenant_id = :t ORDER BY external_id"),
                                 {"t": tenant}).scalars().all()
        assert texts == ["Tilaukseni on myöhässä", "", ""]
        assert actions(admin_engine, summary["contact_id"]) == [("contact.erase", "key:crm")]

        # Idempotent: by identity nobody is left; by id nothing changes.
        again = tk.post(path, json={"identity": {"kind": "phone", "value": "+46 70 123 45 67"}}).json()
        assert (again["contact_id"], again["already_erased"], again["jobs"]) == (None, True, 0)
        assert not any(again["counts"].values())
        by_id = tk.post(path, json={"contact_id": summary["contact_id"]}).json()
        assert by_id["already_erased"] is True and not any(by_id["counts"].values())
        assert len(actions(admin_engine, summary["contact_id"])) == 1

        other = new_inbox(app_engine, "api").tenant_id
        assert tk.post(f"{A}/tenants/{other}/erase-contact", json={"contact_id": str(uuid.uuid4())}).status_code == 404
    assert op.post(path, json={"contact_id": str(uuid.uuid4())}).status_code == 404
    assert op.post(f"{A}/tenants/{uuid.uuid4()}/erase-contact", json={"contact_id": str(uuid.uuid4())}).status_code \
        == 404


@pytest.mark.parametrize(("body", "field"), [
    ({}, "contact_id"),
    ({"contact_id": str(uuid.uuid4()), "identity": {"kind": "email", "value": "a@b.se"}}, "contact_id"),
    ({"contact_id": "not-a-uuid"}, "contact_id"),
    ({"contact_id": 5}, "contact_id"),
    ({"identity": {"kind": "fax", "value": "123"}}, "identity.kind"),
    ({"identity": {"kind": "email", "value": ""}}, "identity.value"),
    ({"identity": {"kind": "email", "value": "a\x00@b.se"}}, "identity.value"),
    ({"identity": {"kind": "email", "value": "\u202ea@b.se"}}, "identity.value"),
    ({"identity": {"kind": "phone", "value": "call me"}}, "identity.value"),
    ({"identity": {"kind": "external", "value": "x" * 5000}}, "identity.value"),
    ({"identity": "email:a@b.se"}, "identity"),
    ({"identity": {"kind": "email", "value": "a@b.se", "extra": 1}}, "identity.extra"),
])
def test_erase_refuses_invalid_fields_with_422(op: httpx.Client, app_engine: Engine, body: dict[str, Any],
                                               field: str) -> None:
    tenant = new_inbox(app_engine, "api").tenant_id
    response = op.post(f"{A}/tenants/{tenant}/erase-contact", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["fields"], response.json()


HOSTILE = [
    (b'{"identity": {"kind": "email", "value": "\\ud800"}}', 400),  # a lone surrogate is not JSON to the parser
    (b'[1, 2]', 422),
    (b'"a string"', 422),
    (b'{"contact_id": ' + b'{"a": ' * 200 + b'1' + b'}' * 201, 400),  # past the parser's depth
    (b'[' * 100_000 + b']' * 100_000, 413),
    (b'{"identity": {"kind": "email", "value": "' + b'x' * 70_000 + b'"}}', 413),
    (b"not json", 400),
    (b'{"first_response_minutes": NaN}', 422),
    (b'{"confirm": null, "contact_id": null}', 422),
]


@pytest.mark.parametrize(("body", "status"), HOSTILE)
@pytest.mark.parametrize("where", ["erase-contact", "sla-policies/normal", "delete"])
def test_hostile_bodies_get_a_clear_4xx_and_change_nothing(op: httpx.Client, app_engine: Engine,
                                                           admin_engine: Engine, where: str, body: bytes,
                                                           status: int) -> None:
    tenant = new_inbox(app_engine, "api").tenant_id
    before = rows_of(admin_engine, tenant)
    method = "PUT" if where.startswith("sla") else "POST"
    response = op.request(method, f"{A}/tenants/{tenant}/{where}", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert set(response.json()) >= {"error", "detail"}
    assert rows_of(admin_engine, tenant) == before


def test_every_new_operation_wants_a_key(base: str) -> None:
    tenant, job = uuid.uuid4(), uuid.uuid4()
    with client(base) as anonymous:
        for method, path in [("POST", f"/tenants/{tenant}/erase-contact"), ("GET", f"/tenants/{tenant}/stats"),
                             ("GET", "/stats"), ("POST", f"/tenants/{tenant}/export"), ("GET", f"/jobs/{job}/download"),
                             ("POST", f"/tenants/{tenant}/delete"), ("GET", f"/tenants/{tenant}/sla-policies"),
                             ("PUT", f"/tenants/{tenant}/sla-policies/high"),
                             ("DELETE", f"/tenants/{tenant}/sla-policies/high")]:
            response = anonymous.request(method, A + path, json={})
            assert response.status_code == 401 and response.json()["error"] == "unauthorized", (method, path)


# -- storage figures -------------------------------------------------------------------------------------------
def test_stats_of_one_tenant_and_of_every_tenant_page_by_page(base: str, op: httpx.Client, app_engine: Engine,
                                                              admin_engine: Engine) -> None:
    tenant, other = tenant_of(app_engine, "Counted"), tenant_of(app_engine, "Other")
    figures = op.get(f"{A}/tenants/{tenant}/stats")
    assert figures.status_code == 200, figures.text
    body = figures.json()
    assert body["tenant_id"] == str(tenant) and body["tables"]["messages"]["rows"] == 1 and body["bytes"] > 0
    assert body["rows"] == sum(rows_of(admin_engine, tenant).values())
    assert set(body["retention"]) == {"event_bodies", "failures", "audit_rows", "ai_usage_rows", "change_events"}
    assert body["retention"]["audit_rows"]["days"] == 365

    first = op.get(f"{A}/stats", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_offset"] == 2
    second = op.get(f"{A}/stats", params={"limit": 2, "offset": 2}).json()
    assert {t["tenant_id"] for t in first["items"]}.isdisjoint(t["tenant_id"] for t in second["items"])
    assert op.get(f"{A}/stats", params={"limit": 501}).json()["fields"] == {
        "limit": "Input should be less than or equal to 500"}

    key = make_key(admin_engine, tenant_id=tenant)
    with client(base, key) as tk:
        own = tk.get(f"{A}/stats").json()
        assert [t["tenant_id"] for t in own["items"]] == [str(tenant)] and own["next_offset"] is None
        assert tk.get(f"{A}/tenants/{other}/stats").status_code == 404
    assert op.get(f"{A}/tenants/{uuid.uuid4()}/stats").status_code == 404


# -- export ----------------------------------------------------------------------------------------------------
def exports_on_disk(tenant: uuid.UUID) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"intake-export-*/intake-export-{tenant}.zip"))


def test_export_is_a_job_whose_archive_downloads_then_goes_with_the_process(
    stack: dict[str, str], app_engine: Engine, admin_engine: Engine,
) -> None:
    tenant = tenant_of(app_engine, "Exported")
    with admin_server(stack) as base:
        operator, own = make_key(admin_engine, name="exporter"), make_key(admin_engine, tenant_id=tenant, name="own")
        other = make_key(admin_engine, tenant_id=tenant_of(app_engine, "Not exported"), name="other")
        expected = rows_of(admin_engine, tenant)
        with client(base, operator) as op, client(base, own) as tk, client(base, other) as ok:
            started = op.post(f"{A}/tenants/{tenant}/export")
            assert started.status_code == 202, started.text
            assert started.json()["kind"] == "tenant.export" and started.json()["subject_id"] == str(tenant)
            job = finished(op, started.json())
            assert job["status"] == "succeeded" and job["done"] == job["total"] == sum(expected.values()) + 1
            manifest = job["result"]
            assert manifest["format"] == "intake-export/1" and manifest["tenant_id"] == str(tenant)

            download = op.get(f"{A}/jobs/{job['id']}/download")
            assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
            assert f"intake-export-{tenant}.zip" in download.headers["content-disposition"]
            with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
                stored = orjson.loads(archive.read("manifest.json"))
                lines = archive.read("messages.jsonl").splitlines()
            assert stored["checksum"] == manifest["checksum"] and len(lines) == expected["messages"]
            assert stored["tables"]["audit_logs"]["rows"] == expected["audit_logs"] + 1  # the export's own row
            assert actions(admin_engine, tenant)[-1] == ("tenant.export", "key:exporter")

            # The operator's job is the operators'; the tenant's own key exports and downloads its own.
            assert tk.get(f"{A}/jobs/{job['id']}/download").status_code == 404
            mine = finished(tk, tk.post(f"{A}/tenants/{tenant}/export").json())
            assert tk.get(f"{A}/jobs/{mine['id']}/download").status_code == 200
            assert ok.get(f"{A}/jobs/{mine['id']}/download").status_code == 404
            assert ok.post(f"{A}/tenants/{tenant}/export").status_code == 404

            not_export = op.post(f"{A}/failures/discard", json={"tenant_id": str(tenant), "dry_run": True}).json()
            assert op.get(f"{A}/jobs/{not_export['id']}/download").status_code == 404
            assert op.get(f"{A}/jobs/{uuid.uuid4()}/download").status_code == 404
            assert op.post(f"{A}/tenants/{uuid.uuid4()}/export").status_code == 404
        assert len(exports_on_disk(tenant)) == 2
    assert exports_on_disk(tenant) == []


def test_a_cancelled_export_stops_and_leaves_no_archive(op: httpx.Client, app_engine: Engine,
                                                        admin_engine: Engine) -> None:
    tenant = tenant_of(app_engine, "Cancelled export")
    with admin_engine.connect() as blocker, blocker.begin():
        # The export counts every table before it writes a row: it waits here until the cancel is in.
        blocker.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
        job = op.post(f"{A}/tenants/{tenant}/export").json()
        assert op.post(f"{A}/tenants/{tenant}/export").status_code == 409  # one export of a tenant at a time
        assert op.post(f"{A}/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    ended = finished(op, job)
    assert ended["status"] == "cancelled" and ended["result"] is None and ended["done"] < ended["total"]
    assert op.get(f"{A}/jobs/{job['id']}/download").status_code == 409
    assert exports_on_disk(tenant) == []


def test_jobs_about_one_subject_run_alone_and_their_files_go_when_forgotten() -> None:
    jobs, principal, subject = Jobs(), Principal(uuid.uuid4(), "t", None), uuid.uuid4()
    release = threading.Event()
    try:
        def slow(job: Any) -> None:
            job.files = Path(tempfile.mkdtemp(prefix="intake-test-job-"))
            release.wait(30)

        running = jobs.start("tenant.delete", principal, 1, slow, subject_id=subject, cancellable=False)
        with pytest.raises(Conflict):
            jobs.start("tenant.delete", principal, 1, slow, subject_id=subject)
        with pytest.raises(Conflict):
            jobs.cancel(running.id, principal)
        release.set()
        wait_for(lambda: running.status == "succeeded", timeout=10)
        assert running.files is not None and running.files.is_dir()
        running.finished_at = datetime.now(UTC) - timedelta(seconds=KEEP_SECONDS + 1)
        jobs.start("other", principal, 0, None)
        assert not running.files.exists()
        with pytest.raises(NotFound):
            jobs.get(running.id, principal)
    finally:
        release.set()
        jobs.shutdown()


def test_a_jobs_files_go_on_time_with_no_request_to_forget_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.admin.background.KEEP_SECONDS", 0.5)
    jobs, principal = Jobs(), Principal(uuid.uuid4(), "t", None)
    try:
        def write(job: Any) -> None:
            job.files = Path(tempfile.mkdtemp(prefix="intake-test-job-"))

        job = jobs.start("tenant.export", principal, 1, write, subject_id=uuid.uuid4())
        wait_for(lambda: job.status == "succeeded", timeout=10)
        assert job.files is not None
        wait_for(lambda: not job.files.exists(), timeout=10)  # nothing else touches `jobs` meanwhile
    finally:
        jobs.shutdown()


# -- deletion --------------------------------------------------------------------------------------------------
def test_delete_is_an_operator_job_that_leaves_nothing_of_the_tenant(
    base: str, op: httpx.Client, app_engine: Engine, admin_engine: Engine, redis_client: redis.Redis,
) -> None:
    gone, kept = tenant_of(app_engine, "Leaving"), tenant_of(app_engine, "Staying")
    gone_job = enqueue(redis_client, "ingest", gone, [uuid.uuid4()])
    kept_job = enqueue(redis_client, "ingest", kept, [uuid.uuid4()])
    redis_client.set(f"intake:test:{gone}", "1")
    kept_before = rows_of(admin_engine, kept)
    path = f"{A}/tenants/{gone}/delete"

    assert op.post(path, json={"confirm": str(kept)}).json()["fields"] == {"confirm": "must repeat the tenant's id"}
    assert "confirm" in op.post(path, json={}).json()["fields"]
    assert "confirm" in op.post(path, json={"confirm": 7}).json()["fields"]
    with client(base, make_key(admin_engine, tenant_id=gone)) as tk:
        assert tk.post(path, json={"confirm": str(gone)}).status_code == 403  # operators delete tenants
    assert rows_of(admin_engine, gone)["tenants"] == 1

    started = op.post(path, json={"confirm": str(gone)})
    assert started.status_code == 202, started.text
    job = finished(op, started.json())
    assert job["status"] == "succeeded", job
    assert job["done"] == job["total"] == job["result"]["rows"] > 20
    assert job["result"]["redis_keys"] >= 1 and redis_client.hget(f"{NAMESPACE}:ingest.msgs", gone_job) is None
    assert set(rows_of(admin_engine, gone).values()) == {0}
    assert rows_of(admin_engine, kept) == kept_before
    assert not [k for k in redis_client.scan_iter("*") if str(gone).encode() in k]
    assert redis_client.hget(f"{NAMESPACE}:ingest.msgs", kept_job) is not None
    with admin_engine.connect() as conn:
        audit = conn.execute(text("SELECT tenant_id, actor, after FROM audit_logs WHERE action = 'tenant.delete' "
                                  "AND subject_id = :t"), {"t": str(gone)}).one()
    assert audit.tenant_id is None and audit.actor == "key:operator in tests"
    assert audit.after["deleted"]["tenants"] == 1
    assert op.post(path, json={"confirm": str(gone)}).status_code == 404
    assert op.post(f"{A}/jobs/{job['id']}/cancel").status_code == 409
    redis_client.delete(f"{NAMESPACE}:ingest.msgs", kept_job)


# -- SLA policies ----------------------------------------------------------------------------------------------
HELSINKI = {"first_response_minutes": 240, "resolution_minutes": 2880, "time_zone": "Europe/Helsinki",
            "business_hours": {"mon": [["09:00", "17:00"]], "sat": [["10:00", "14:00"], ["15:00", "24:00"]]},
            "holidays": ["2026-12-24", "2026-12-06"]}


def test_sla_policies_set_list_replace_delete_with_audit(base: str, op: httpx.Client, app_engine: Engine,
                                                         admin_engine: Engine) -> None:
    tenant = new_inbox(app_engine, "api").tenant_id
    path = f"{A}/tenants/{tenant}/sla-policies"
    key = make_key(admin_engine, tenant_id=tenant, name="sla")
    with client(base, key) as tk:
        saved = tk.put(f"{path}/high", json=HELSINKI)
        assert saved.status_code == 200, saved.text
        assert saved.json() == {**HELSINKI, "priority": "high", "holidays": ["2026-12-06", "2026-12-24"]}
        assert tk.put(f"{path}/normal", json={"resolution_minutes": 60}).json()["time_zone"] == "UTC"
        listed = tk.get(path).json()
        assert [p["priority"] for p in listed["items"]] == ["normal", "high"] and listed["next_offset"] is None
        assert tk.get(path, params={"limit": 1}).json()["next_offset"] == 1

        replaced = tk.put(f"{path}/high", json={"first_response_minutes": 30}).json()
        assert replaced["business_hours"] is None and replaced["resolution_minutes"] is None
        assert tk.delete(f"{path}/normal").json()["deleted"] is True
        assert tk.delete(f"{path}/normal").status_code == 404
        assert [p["priority"] for p in tk.get(path).json()["items"]] == ["high"]
        assert tk.put(f"{path}/critical", json={"first_response_minutes": 30}).status_code == 404

        other = new_inbox(app_engine, "api").tenant_id
        assert tk.get(f"{A}/tenants/{other}/sla-policies").status_code == 404
        assert tk.put(f"{A}/tenants/{other}/sla-policies/high", json=HELSINKI).status_code == 404
        assert tk.delete(f"{A}/tenants/{other}/sla-policies/high").status_code == 404
    with admin_engine.connect() as conn:
        rows = conn.execute(text("SELECT action, actor, before, after FROM audit_logs WHERE tenant_id = :t "
                                 "AND subject_type = 'sla_policy' ORDER BY created_at"), {"t": tenant}).all()
    assert [(r.action, r.actor) for r in rows] == [("sla.set", "key:sla")] * 3 + [("sla.delete", "key:sla")]
    assert rows[2].before["time_zone"] == "Europe/Helsinki" and rows[2].after["first_response_minutes"] == 30
    assert op.put(f"{A}/tenants/{uuid.uuid4()}/sla-policies/high", json=HELSINKI).status_code == 404


@pytest.mark.parametrize(("change", "field"), [
    ({"first_response_minutes": None, "resolution_minutes": None}, "first_response_minutes"),
    ({"first_response_minutes": 0}, "first_response_minutes"),
    ({"first_response_minutes": "60"}, "first_response_minutes"),
    ({"first_response_minutes": 1.5}, "first_response_minutes"),
    ({"resolution_minutes": 10**9}, "resolution_minutes"),
    ({"resolution_minutes": True}, "resolution_minutes"),
    ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
    ({"time_zone": "../../etc/passwd"}, "time_zone"),
    ({"time_zone": "UTC\x00"}, "time_zone"),
    ({"time_zone": ""}, "time_zone"),
    ({"business_hours": {"mon": [["17:00", "09:00"]]}}, "business_hours"),
    ({"business_hours": {"mon": []}}, "business_hours"),
    ({"business_hours": {"mon": [["24:00", "24:00"]]}}, "business_hours"),
    ({"business_hours": {"mon": [["9:00", "17:00"]]}}, "business_hours.mon.0.0"),
    ({"business_hours": {"mon": [["09:00"]]}}, "business_hours.mon.0.1"),
    ({"business_hours": {"mon": [["09:00", "10:00"]] * 25}}, "business_hours.mon"),
    ({"business_hours": {"monday": [["09:00", "17:00"]]}}, "business_hours.monday.[key]"),
    ({"business_hours": "mon-fri 09:00-17:00"}, "business_hours"),
    ({"holidays": ["2026-02-30"]}, "holidays.0"),
    ({"holidays": [20260101]}, "holidays.0"),
    ({"holidays": ["2026-01-01"] * 1001}, "holidays"),
    ({"escalate_to": "boss"}, "escalate_to"),
])
def test_sla_policy_refuses_invalid_fields_with_422_and_keeps_the_old(op: httpx.Client, app_engine: Engine,
                                                                      change: dict[str, Any], field: str) -> None:
    tenant = new_inbox(app_engine, "api").tenant_id
    path = f"{A}/tenants/{tenant}/sla-policies"
    assert op.put(f"{path}/urgent", json=HELSINKI).status_code == 200
    response = op.put(f"{path}/urgent", json={**HELSINKI, **change})
    assert response.status_code == 422, response.text
    assert field in response.json()["fields"], response.json()
    assert op.get(path).json()["items"][0]["first_response_minutes"] == HELSINKI["first_response_minutes"]
