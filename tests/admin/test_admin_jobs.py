"""Fair admin jobs and a bounded admin API, over real HTTP against real PostgreSQL and Redis: one running job per
tenant, tenant jobs that cannot starve an operator's, paced replays that hold no transaction while they wait,
the jobs list, per-key request limits, the statement timeout on reads, cached storage figures, and a deleted
tenant's exports going with it."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.admin.test_admin_api import seed_failures
from tests.admin_server import Keyed, admin_server, client, make_key, make_tenant
from tests.browser import admin_app, serve
from tests.console.test_console import sign_in
from tests.processes import INTAKE, wait_for
from workers.admin.background import TENANT_THREADS

A = "/v1/admin"
# Connections of the admin process (its two engines) that sit inside an open transaction doing nothing.
IDLE_IN_TRANSACTION = text("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'intake-admin%' "
                           "AND state LIKE 'idle in transaction%'")


def job_of(c: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = c.get(f"{A}/jobs/{job['id']}").json()
    return view


def ended(c: httpx.Client, job: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    wait_for(lambda: job_of(c, job)["status"] != "running", timeout=timeout)
    return job_of(c, job)


def exports_on_disk(tenant: uuid.UUID) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"intake-export-*/intake-export-{tenant}.zip"))


@pytest.fixture
def pacers(stack: dict[str, str], admin_engine: Engine) -> Iterator[tuple[str, Keyed, list[httpx.Client]]]:
    """An admin server and, for one tenant more than the tenant pool has threads, a tenant key's client whose
    tenant has five dead failures."""
    with admin_server(stack) as base:
        clients = []
        for n in range(TENANT_THREADS + 1):
            tenant = make_tenant(admin_engine, f"Pacer {n}")
            seed_failures(admin_engine, str(tenant), 5)
            clients.append(client(base, make_key(admin_engine, tenant_id=tenant, name=f"pacer {n}")))
        try:
            yield base, make_key(admin_engine, name="operator beside pacers"), clients
        finally:
            for c in clients:
                c.close()


def test_paced_tenant_jobs_hold_no_transaction_and_never_delay_an_operators_export(
    pacers: tuple[str, Keyed, list[httpx.Client]], admin_engine: Engine,
) -> None:
    base, operator, clients = pacers
    # Every tenant starts a replay at one failure every ten seconds: the first fill the tenant pool's threads.
    jobs = []
    for c in clients:
        started = c.post(f"{A}/failures/replay", json={"all": True, "rate": 0.1})
        assert started.status_code == 202, started.text
        jobs.append(started.json())
    pacing, waiting = list(zip(clients, jobs, strict=True))[:-1], (clients[-1], jobs[-1])
    wait_for(lambda: all(job_of(c, j)["done"] == 1 for c, j in pacing), timeout=30)
    assert job_of(*waiting)["started_at"] is None and job_of(*waiting)["status"] == "running"

    # While they pace, none holds a transaction (a claim, row locks) open: sampled between progress reads.
    with admin_engine.connect() as conn:
        for _ in range(20):
            assert conn.execute(IDLE_IN_TRANSACTION).scalar_one() == 0
            assert all(job_of(c, j)["done"] == 1 for c, j in pacing)

    # A tenant runs one job at a time: a second is refused with the running one's id; a dry run only counts.
    second = clients[0].post(f"{A}/failures/discard", json={"all": True})
    assert second.status_code == 409 and second.json()["error"] == "conflict"
    assert jobs[0]["id"] in second.json()["detail"] and "one job at a time" in second.json()["detail"]
    dry = clients[0].post(f"{A}/failures/discard", json={"all": True, "dry_run": True})
    assert dry.status_code == 202 and dry.json()["total"] == 4

    # The operator's export runs on its own pool: it ends while every tenant job still paces or waits.
    exported = make_tenant(admin_engine, "Exported beside pacers")
    with client(base, operator) as op:
        export = op.post(f"{A}/tenants/{exported}/export").json()
        finished = ended(op, export, timeout=20)
        assert finished["status"] == "succeeded" and finished["started_at"] is not None
        assert all(job_of(c, j)["status"] == "running" for c, j in pacing)
        assert job_of(*waiting)["started_at"] is None

    # A job cancelled while it waits for a thread ends at once, unrun, and its tenant may start another.
    cancelled = clients[-1].post(f"{A}/jobs/{jobs[-1]['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None and cancelled["done"] == 0
    retried = clients[-1].post(f"{A}/failures/replay", json={"all": True, "rate": 0.1})
    assert retried.status_code == 202, retried.text
    waiting = (clients[-1], retried.json())
    # A cancel ends a pause at once, and the waiting job takes the thread it frees.
    assert clients[0].post(f"{A}/jobs/{jobs[0]['id']}/cancel").status_code == 200
    assert ended(clients[0], jobs[0], timeout=5)["status"] == "cancelled"
    wait_for(lambda: job_of(*waiting)["started_at"] is not None, timeout=10)
    for c, j in [*zip(clients[1:-1], jobs[1:-1], strict=True), waiting]:
        assert c.post(f"{A}/jobs/{j['id']}/cancel").status_code == 200
        assert ended(c, j, timeout=5)["status"] == "cancelled"
    # Its job ended, the tenant may start another.
    again = clients[0].post(f"{A}/failures/discard", json={"all": True})
    assert again.status_code == 202, again.text
    assert ended(clients[0], again.json(), timeout=10)["done"] == 4


def test_jobs_list_shows_an_operator_every_job_and_a_tenant_key_its_own(
    base: str, op: httpx.Client, admin_engine: Engine,
) -> None:
    mine, theirs = make_tenant(admin_engine, "Lists jobs"), make_tenant(admin_engine, "Other lister")
    seed_failures(admin_engine, str(mine), 2)
    own, other = make_key(admin_engine, tenant_id=mine), make_key(admin_engine, tenant_id=theirs)
    with client(base, own) as tk, client(base, other) as ok:
        first = tk.post(f"{A}/failures/discard", json={"all": True, "dry_run": True}).json()
        second = tk.post(f"{A}/failures/discard", json={"all": True}).json()
        assert ended(tk, second)["status"] == "succeeded"
        theirs_job = ok.post(f"{A}/failures/discard", json={"all": True, "dry_run": True}).json()
        operators = op.post(f"{A}/failures/discard", json={"tenant_id": str(mine), "dry_run": True}).json()

        listed = tk.get(f"{A}/jobs").json()
        assert [j["id"] for j in listed["items"]] == [second["id"], first["id"]]  # newest first, its own only
        assert listed["next_offset"] is None and listed["items"][0]["done"] == 2
        assert tk.get(f"{A}/jobs", params={"limit": 1}).json()["next_offset"] == 1
        assert [j["id"] for j in tk.get(f"{A}/jobs", params={"limit": 1, "offset": 1}).json()["items"]] \
            == [first["id"]]
        assert tk.get(f"{A}/jobs", params={"status": "running"}).json()["items"] == []
        assert tk.get(f"{A}/jobs", params={"tenant_id": str(theirs)}).status_code == 404  # one answer for ids it may not see
        assert [j["id"] for j in ok.get(f"{A}/jobs").json()["items"]] == [theirs_job["id"]]

    everything = {j["id"] for j in op.get(f"{A}/jobs", params={"limit": 500}).json()["items"]}
    assert {first["id"], second["id"], theirs_job["id"], operators["id"]} <= everything
    by_tenant = op.get(f"{A}/jobs", params={"tenant_id": str(mine)}).json()["items"]
    assert [j["id"] for j in by_tenant] == [second["id"], first["id"]]
    assert all(j["status"] == "succeeded" for j in op.get(f"{A}/jobs", params={"status": "succeeded"}).json()["items"])
    assert httpx.get(f"{base}{A}/jobs").status_code == 401


@pytest.mark.parametrize(("params", "field"), [
    ({"status": "sleeping"}, "status"),
    ({"status": "running\x00"}, "status"),
    ({"status": "\uff52\uff55\uff4e\uff4e\uff49\uff4e\uff47"}, "status"),  # fullwidth "running"
    ({"tenant_id": "not-a-tenant"}, "tenant_id"),
    ({"tenant_id": "\u202eabc"}, "tenant_id"),
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "²"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "9" * 400}, "offset"),
    ({"nonsense": "1"}, "nonsense"),
])
def test_hostile_jobs_queries_get_422_naming_the_field(op: httpx.Client, params: dict[str, str],
                                                        field: str) -> None:
    answer = op.get(f"{A}/jobs", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid" and field in answer.json()["fields"]


def test_each_key_has_its_own_request_bucket(stack: dict[str, str], admin_engine: Engine) -> None:
    with admin_server(stack, admin_rate_limit_per_second=0.2, admin_rate_limit_burst=3) as base:
        busy, calm = make_key(admin_engine, name="busy"), make_key(admin_engine, name="calm")
        with client(base, busy) as b, client(base, calm) as c:
            assert [b.get(f"{A}/tenants").status_code for _ in range(3)] == [200] * 3
            refused = b.get(f"{A}/tenants")
            assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 5
            assert refused.json()["error"] == "rate_limited" and "retry after" in refused.json()["detail"].lower()
            assert b.post(f"{A}/tenants", json={"name": "x"}).status_code == 429  # writes share the bucket
            # Another key, and strangers with no valid key (401, never charged to a key), are not slowed.
            for _ in range(5):
                assert httpx.get(f"{base}{A}/tenants", headers={"authorization": "Bearer ik_wrong"}).status_code == 401
            assert [c.get(f"{A}/tenants").status_code for _ in range(3)] == [200] * 3


def test_reads_stop_at_the_statement_timeout_and_figures_come_from_a_short_cache(
    stack: dict[str, str], admin_engine: Engine,
) -> None:
    cached, uncached = make_tenant(admin_engine, "Cached figures"), make_tenant(admin_engine, "Uncached figures")
    with admin_server(stack, admin_statement_timeout_ms=300) as base, \
            client(base, make_key(admin_engine, name="figures")) as op:
        first = op.get(f"{A}/tenants/{cached}/stats")
        assert first.status_code == 200 and first.json()["cached_at"]
        with admin_engine.connect() as blocker, blocker.begin():
            # Nobody reads `messages` while this is held: a read of it waits (and times out), a cache hit does not.
            blocker.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
            again = op.get(f"{A}/tenants/{cached}/stats")
            assert again.status_code == 200 and again.json() == first.json()

            slow = op.get(f"{A}/tenants/{uncached}/stats")
            assert slow.status_code == 503 and slow.json()["error"] == "statement_timeout"
            assert "INTAKE_ADMIN_STATEMENT_TIMEOUT_MS" in slow.json()["detail"] and slow.headers["retry-after"]
        # The timeout is the transaction's own: the connection it used serves a write with no limit after it.
        assert op.patch(f"{A}/tenants/{uncached}", json={"name": "Renamed"}).status_code == 200
        # The console's pages read under the same timeout.
        with httpx.Client(base_url=base, timeout=30) as console:
            sign_in(console, make_key(admin_engine, name="console reader").key)
            with admin_engine.connect() as blocker, blocker.begin():
                blocker.execute(text("LOCK TABLE audit_logs IN ACCESS EXCLUSIVE MODE"))
                page = console.get("/audit")
                assert page.status_code == 503 and "INTAKE_ADMIN_STATEMENT_TIMEOUT_MS" in page.text
            assert console.get("/audit").status_code == 200

        # Calls that come together for figures nobody has read wait for one read and share it.
        fresh = make_tenant(admin_engine, "Figures read once")
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: op.get(f"{A}/tenants/{fresh}/stats").json(), range(8)))
        assert len({a["cached_at"] for a in answers}) == 1


def test_a_tenant_deleted_takes_its_exports_and_their_archives(
    stack: dict[str, str], admin_engine: Engine,
) -> None:
    tenant = make_tenant(admin_engine, "Exported, then deleted")
    with admin_server(stack) as base, client(base, make_key(admin_engine, name="deleter")) as op, \
            client(base, make_key(admin_engine, tenant_id=tenant, name="own exporter")) as tk:
        by_operator = ended(op, op.post(f"{A}/tenants/{tenant}/export").json())
        by_tenant = ended(tk, tk.post(f"{A}/tenants/{tenant}/export").json())
        assert by_operator["status"] == by_tenant["status"] == "succeeded"
        assert op.get(f"{A}/jobs/{by_operator['id']}/download").status_code == 200
        assert len(exports_on_disk(tenant)) == 2

        deletion = ended(op, op.post(f"{A}/tenants/{tenant}/delete", json={"confirm": str(tenant)}).json())
        assert deletion["status"] == "succeeded" and deletion["result"]["admin_jobs"] == 2
        assert exports_on_disk(tenant) == []
        for job in (by_operator, by_tenant):
            gone = op.get(f"{A}/jobs/{job['id']}/download")
            assert gone.status_code == 404 and gone.json()["error"] == "not_found"
        listed = {j["id"] for j in op.get(f"{A}/jobs", params={"limit": 500}).json()["items"]}
        assert deletion["id"] in listed and not {by_operator["id"], by_tenant["id"]} & listed


def test_a_deletion_stops_an_export_of_its_tenant_that_is_still_running(
    stack: dict[str, str], admin_engine: Engine,
) -> None:
    tenant = make_tenant(admin_engine, "Deleted while exporting")
    with admin_server(stack) as base, client(base, make_key(admin_engine, name="racer")) as op:
        with admin_engine.connect() as blocker, blocker.begin():
            # The export counts every table before it writes a row: it waits here, running, with no archive.
            blocker.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
            export = op.post(f"{A}/tenants/{tenant}/export").json()
            wait_for(lambda: job_of(op, export)["started_at"] is not None, timeout=10)
            deletion = op.post(f"{A}/tenants/{tenant}/delete", json={"confirm": str(tenant)}).json()
            wait_for(lambda: job_of(op, export)["cancel_requested"], timeout=10)
        assert ended(op, deletion)["status"] == "succeeded"
        assert op.get(f"{A}/jobs/{export['id']}").status_code == 404
        assert exports_on_disk(tenant) == []


def test_the_console_lists_jobs_live_and_cancels_one(stack: dict[str, str], admin_engine: Engine) -> None:
    mine, theirs = make_tenant(admin_engine, "Console jobs"), make_tenant(admin_engine, "Console bystander")
    seed_failures(admin_engine, str(mine), 3)
    own, other = make_key(admin_engine, tenant_id=mine), make_key(admin_engine, tenant_id=theirs)
    operator = make_key(admin_engine, name="console operator")
    with serve(admin_app(stack)) as base, client(base, own) as api:
        job = api.post(f"{A}/failures/replay", json={"all": True, "rate": 0.1}).json()
        wait_for(lambda: job_of(api, job)["done"] == 1, timeout=20)
        with httpx.Client(base_url=base, timeout=30) as as_operator, httpx.Client(base_url=base, timeout=30) as tc, \
                httpx.Client(base_url=base, timeout=30) as bystander:
            sign_in(as_operator, operator.key)
            listed = as_operator.get("/jobs")
            assert listed.status_code == 200 and f'href="/jobs/{job["id"]}"' in listed.text
            row = listed.text[listed.text.index(f'data-job="{job["id"]}"'):]
            row = row[:row.index("</tr>")]
            assert "failures.replay" in row and "badge running" in row and "1 of 3" in row
            assert f'action="/jobs/{job["id"]}/cancel"' in row and "Console jobs" in row
            assert job["id"] in as_operator.get("/jobs/table", params={"status": "running"}).text
            assert job["id"] not in as_operator.get("/jobs/table", params={"status": "succeeded"}).text

            sign_in(bystander, other.key)
            assert job["id"] not in bystander.get("/jobs").text

            token = sign_in(tc, own.key)
            assert tc.post(f"/jobs/{job['id']}/cancel").status_code == 403  # no CSRF token
            cancelled = tc.post(f"/jobs/{job['id']}/cancel", data={"csrf": token}, follow_redirects=False)
            assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/jobs/{job['id']}"
            assert ended(api, job, timeout=5)["status"] == "cancelled"
            row = tc.get("/jobs").text
            assert "badge cancelled" in row and f'action="/jobs/{job["id"]}/cancel"' not in row

            for params in ({"status": "sleeping"}, {"status": "running\x00"}, {"offset": "²"}, {"offset": "9" * 400}):
                odd = tc.get("/jobs", params=params)
                assert odd.status_code == 200 and "Some filters are invalid" in odd.text, params
            assert tc.get("/jobs/table", params={"status": "x" * 10_000}).status_code == 200


def test_an_export_of_a_tenant_deleted_elsewhere_is_not_served(stack: dict[str, str], admin_engine: Engine) -> None:
    """`intake tenant delete` (or another admin process) cannot reach this process's jobs: the download
    checks that its tenant still exists, and removes the archive when it does not."""
    tenant = make_tenant(admin_engine, "Deleted at the command line")
    with admin_server(stack) as base, client(base, make_key(admin_engine, name="cli deleter")) as op:
        export = ended(op, op.post(f"{A}/tenants/{tenant}/export").json())
        assert export["status"] == "succeeded" and len(exports_on_disk(tenant)) == 1
        deleted = subprocess.run([INTAKE, "tenant", "delete", str(tenant), "--confirm", str(tenant)],
                                 capture_output=True, text=True, timeout=120, check=False)
        assert deleted.returncode == 0, deleted.stderr
        gone = op.get(f"{A}/jobs/{export['id']}/download")
        assert gone.status_code == 404 and "was deleted" in gone.json()["detail"]
        assert exports_on_disk(tenant) == []
        assert op.get(f"{A}/jobs/{export['id']}").status_code == 404
