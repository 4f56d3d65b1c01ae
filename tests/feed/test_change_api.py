"""Reading the change feed: the poll API, the Server-Sent Events stream and `intake changes`, over real HTTP
against real PostgreSQL. Pages have no gap and no repeat, a stream resumes where it left off and hears of new
events promptly through the process's one LISTEN connection, another tenant's key finds nothing, and hostile
parameters get a clear 422."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from config import get_settings
from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.changes import Change
from tests.admin_server import Keyed, admin_app, client, make_key, make_tenant
from tests.processes import INTAKE, run_intake, wait_for

A = "/v1/admin"


@pytest.fixture(scope="module")
def served(stack: dict[str, str], admin_engine: Engine) -> Iterator[tuple[str, Any]]:
    """The admin server with a short heartbeat, and its process state (the shared listener)."""
    settings = get_settings().model_copy(update={"sse_heartbeat_seconds": 0.5})
    with admin_app(stack, settings) as (base, app):
        yield base, app.state.admin


def add(engine: Engine, tenant: uuid.UUID, *kinds: str) -> None:
    """Events committed as the fleet commits them: one transaction, recorded last."""
    with engine.begin() as conn:
        bind_tenant(conn, TenantId(tenant))
        changes.record(conn, TenantId(tenant), [Change(k, {"n": k}) for k in kinds])


def keyed_tenant(admin_engine: Engine, name: str) -> tuple[uuid.UUID, Keyed]:
    tenant = make_tenant(admin_engine, name)
    return tenant, make_key(admin_engine, tenant_id=tenant, name=name)


class Stream:
    """An SSE client reading in a thread: the events it received, as (id, event, data) in order."""

    def __init__(self, base: str, who: Keyed, path: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[tuple[int, str, dict[str, Any]]] = queue.Queue()
        self.comments: list[str] = []
        self.status: int | None = None
        self._client = httpx.Client(base_url=base, headers={**who.headers, **(headers or {})},
                                    timeout=httpx.Timeout(30, read=None))
        self._context = self._client.stream("GET", path)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._context as response:
                self.status = response.status_code
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                    elif line == "" and fields:
                        self.events.put((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                        fields = {}
                    elif line:
                        name, _, value = line.partition(": ")
                        fields[name] = value
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test

    def take(self, n: int, timeout: float = 10) -> list[tuple[int, str, dict[str, Any]]]:
        return [self.events.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=10)


@contextmanager
def streaming(base: str, who: Keyed, path: str, headers: dict[str, str] | None = None) -> Iterator[Stream]:
    stream = Stream(base, who, path, headers)
    try:
        yield stream
    finally:
        stream.close()


def test_pages_follow_the_feed_without_gap_or_repeat(served: tuple[str, Any], admin_engine: Engine,
                                                      app_engine: Engine) -> None:
    base, _ = served
    tenant, key = keyed_tenant(admin_engine, "Feed poll")
    add(app_engine, tenant, "message.received", "conversation.opened", "contact.created")
    add(app_engine, tenant, "message.classified", "draft.created")
    with client(base, key) as c:
        seen, after = [], 0
        while True:
            page = c.get(f"{A}/tenants/{tenant}/changes", params={"after": after, "limit": 2})
            assert page.status_code == 200, page.text
            body = page.json()
            if not body["items"]:
                assert body["next_after"] == after
                break
            assert body["next_after"] == body["items"][-1]["seq"]
            seen += body["items"]
            after = body["next_after"]
        assert [i["seq"] for i in seen] == [1, 2, 3, 4, 5]
        assert [i["type"] for i in seen] == ["message.received", "conversation.opened", "contact.created",
                                             "message.classified", "draft.created"]
        assert set(seen[0]) == {"seq", "id", "type", "created_at", "data"} and seen[0]["data"] == {"n": "message.received"}
        only = c.get(f"{A}/tenants/{tenant}/changes", params={"types": "draft.created, contact.created"}).json()
        assert [i["seq"] for i in only["items"]] == [3, 5] and only["next_after"] == 5
    with client(base, make_key(admin_engine, name="feed operator")) as op:
        assert len(op.get(f"{A}/tenants/{tenant}/changes").json()["items"]) == 5


@pytest.mark.parametrize(("params", "field"), [
    ({"after": "-1"}, "after"),
    ({"after": str(2**63)}, "after"),
    ({"after": "9" * 400}, "after"),
    ({"after": "ten"}, "after"),
    ({"after": "1\x00"}, "after"),
    ({"after": "1.5"}, "after"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"types": "message.received,message.exploded"}, "types"),
    ({"types": "message.received\x00"}, "types"),
    ({"types": "ﾒｯｾｰｼﾞ.受信"}, "types"),
    ({"types": "a," * 600}, "types"),
    ({"since": "1"}, "since"),
])
def test_hostile_parameters_are_refused_with_the_field_named(served: tuple[str, Any], admin_engine: Engine,
                                                             params: dict[str, str], field: str) -> None:
    base, _ = served
    tenant, key = keyed_tenant(admin_engine, "Feed hostile")
    with client(base, key) as c:
        for path in ("changes", "changes/stream"):
            if path.endswith("stream") and field == "limit":
                continue  # the stream has no limit
            response = c.get(f"{A}/tenants/{tenant}/{path}", params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert field in response.json()["fields"], response.text
        bad_resume = c.get(f"{A}/tenants/{tenant}/changes/stream", headers={"Last-Event-ID": "-3"})
        assert bad_resume.status_code == 422 and "Last-Event-ID" in bad_resume.json()["fields"]


def test_another_tenants_key_finds_no_feed(served: tuple[str, Any], admin_engine: Engine, app_engine: Engine) -> None:
    base, _ = served
    theirs, _ = keyed_tenant(admin_engine, "Feed theirs")
    add(app_engine, theirs, "contact.created")
    _, mine = keyed_tenant(admin_engine, "Feed mine")
    with client(base, mine) as c:
        for path in ("changes", "changes/stream"):
            response = c.get(f"{A}/tenants/{theirs}/{path}")
            assert response.status_code == 404 and "contact.created" not in response.text
        assert c.get(f"{A}/tenants/{uuid.uuid4()}/changes").status_code == 404
    with client(base, make_key(admin_engine, name="feed op")) as op:
        assert op.get(f"{A}/tenants/{uuid.uuid4()}/changes/stream").status_code == 404
    with client(base) as anonymous:
        assert anonymous.get(f"{A}/tenants/{theirs}/changes/stream").status_code == 401


def test_a_stream_sends_new_events_promptly_and_resumes_without_gap_or_repeat(
    served: tuple[str, Any], admin_engine: Engine, app_engine: Engine,
) -> None:
    base, admin = served
    tenant, key = keyed_tenant(admin_engine, "Feed stream")
    other, other_key = keyed_tenant(admin_engine, "Feed stream other")
    add(app_engine, tenant, "message.received", "conversation.opened")
    path = f"{A}/tenants/{tenant}/changes/stream"
    with streaming(base, key, path) as first, streaming(base, other_key, f"{A}/tenants/{other}/changes/stream") as b:
        assert [(i, e) for i, e, _ in first.take(2)] == [(1, "message.received"), (2, "conversation.opened")]
        add(app_engine, tenant, "contact.created")  # committed while the stream is open: it arrives by itself
        (received,) = first.take(1)
        assert received[:2] == (3, "contact.created") and received[2]["seq"] == 3 and received[2]["data"]
        add(app_engine, tenant, "contact.merged", "message.classified")
        assert [i for i, _, _ in first.take(2)] == [4, 5]
        wait_for(lambda: "heartbeat" in first.comments, timeout=10)  # quiet: a comment keeps it alive
        assert b.events.empty()  # the other tenant's stream heard nothing of these
    # A reconnecting client names the last event it saw; ?after= is what a new one may give.
    with streaming(base, key, path + "?after=1", headers={"Last-Event-ID": "3"}) as again:
        add(app_engine, tenant, "sla.breached")
        assert [i for i, _, _ in again.take(3)] == [4, 5, 6]
    with streaming(base, key, f"{path}?after=5&types=sla.breached,budget.alert") as filtered:
        add(app_engine, tenant, "budget.alert", "contact.created")
        add(app_engine, tenant, "sla.breached")
        assert [(i, e) for i, e, _ in filtered.take(3)] == [(6, "sla.breached"), (7, "budget.alert"),
                                                            (9, "sla.breached")]  # 8 is of another type
    wait_for(lambda: admin.feed.subscribers() == 0, timeout=10)  # a disconnect ends the stream's reader


def test_every_stream_shares_one_listening_connection(served: tuple[str, Any], admin_engine: Engine,
                                                      app_engine: Engine) -> None:
    base, admin = served
    tenants = [keyed_tenant(admin_engine, f"Feed shared {n}") for n in range(3)]
    with (streaming(base, tenants[0][1], f"{A}/tenants/{tenants[0][0]}/changes/stream") as s0,
          streaming(base, tenants[1][1], f"{A}/tenants/{tenants[1][0]}/changes/stream") as s1,
          streaming(base, tenants[2][1], f"{A}/tenants/{tenants[2][0]}/changes/stream") as s2):
        wait_for(lambda: admin.feed.subscribers() == 3, timeout=10)
        for (tenant, _), stream in zip(tenants, (s0, s1, s2), strict=True):
            add(app_engine, tenant, "contact.created")
            assert stream.take(1)[0][:2] == (1, "contact.created")
        with admin_engine.connect() as conn:
            listening = conn.execute(text("SELECT count(*) FROM pg_stat_activity "
                                          "WHERE application_name = 'intake-admin-feed'")).scalar_one()
        assert listening == 1


def intake(*args: str) -> subprocess.CompletedProcess[str]:
    return run_intake("changes", *args)


def test_the_cli_lists_and_tails_the_feed(admin_engine: Engine, app_engine: Engine) -> None:
    tenant = make_tenant(admin_engine, "Feed CLI")
    add(app_engine, tenant, "message.received", "contact.created", "draft.created")
    listed = intake("list", "--tenant", str(tenant), "--after", "1", "--limit", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [i["seq"] for i in page["items"]] == [2] and page["next_after"] == 2
    typed = json.loads(intake("list", "--tenant", str(tenant), "--types", "draft.created", "--json").stdout)
    assert [i["type"] for i in typed["items"]] == ["draft.created"]
    for args, says in ((["--after", "-1"], "--after"), (["--limit", "5000"], "--limit"),
                       (["--types", "message.exploded"], "unknown event type"), (["--types", "a\tb"], "--types")):
        refused = intake("list", "--tenant", str(tenant), *args)
        assert refused.returncode == 1 and says in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert intake("list", "--tenant", "not-a-uuid").returncode == 1
    assert intake("list", "--tenant", str(uuid.uuid4())).returncode == 1  # no such tenant

    with subprocess.Popen([INTAKE, "changes", "tail", "--tenant", str(tenant), "--after", "2"],
                          stdout=subprocess.PIPE, text=True) as tail:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout or ()], daemon=True)
        reader.start()
        try:
            assert json.loads(lines.get(timeout=60))["seq"] == 3
            add(app_engine, tenant, "contact.merged")  # committed while it follows: it arrives by itself
            followed = json.loads(lines.get(timeout=30))
            assert (followed["seq"], followed["type"]) == (4, "contact.merged")
        finally:
            tail.terminate()
            tail.wait(timeout=20)
            reader.join(timeout=10)
