"""Webhook deliveries by real `intake worker --queues deliver` processes to a real local receiver that
verifies every signature with the `standardwebhooks` library: in order per conversation under concurrency,
retried through an outage, nothing lost to a killed worker or an emptied Redis, a hanging receiver delaying
no one else, both signatures during a rotation, and an endpoint disabled after its failing window."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import audit, changes
from pipelines.changes import Change
from pipelines.crypto import SecretBox
from pipelines.inboxes import create_tenant
from pipelines.webhooks.delivery import Policy, deliver, due
from pipelines.webhooks.endpoints import Endpoints
from pipelines.webhooks.models import EndpointCreate, RotateEndpointSecret
from tests.processes import wait_for, worker
from tests.receiver import receiver

FAST = {"INTAKE_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "INTAKE_WEBHOOK_RETRY_SCHEDULE": "300ms,300ms,300ms,300ms",
        "INTAKE_WEBHOOK_TIMEOUT_SECONDS": "2", "INTAKE_WEBHOOK_SWEEP_SECONDS": "0.3",
        "INTAKE_WEBHOOK_DISABLE_AFTER": "1h"}


def box() -> SecretBox:
    return SecretBox(os.environ["INTAKE_SECRET_KEY"])


def new_tenant(engine: Engine) -> TenantId:
    with engine.begin() as conn:
        return create_tenant(conn, "Webhook tenant")


def new_endpoint(engine: Engine, tenant: TenantId, url: str, **more: Any) -> tuple[uuid.UUID, str]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        shown = Endpoints(box(), allow_private=True).create(conn, tenant, EndpointCreate(url=url, **more),
                                                            audit.Actor("tests"))
    return shown.endpoint.id, shown.secret


def record(engine: Engine, tenant: TenantId, events: list[Change]) -> None:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        changes.record(conn, tenant, events)


def attempts(engine: Engine, tenant: TenantId, endpoint: uuid.UUID) -> list[Any]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return list(conn.execute(text("SELECT a.*, c.data FROM webhook_attempts a JOIN change_events c "
                                      "ON c.tenant_id = a.tenant_id AND c.seq = a.event_seq "
                                      "WHERE endpoint_id = :e ORDER BY event_seq"), {"e": endpoint}))


def all_delivered(engine: Engine, tenant: TenantId, endpoint: uuid.UUID, count: int) -> bool:
    rows = attempts(engine, tenant, endpoint)
    return len(rows) == count and all(r.status == "delivered" for r in rows)


def event_ids(engine: Engine, tenant: TenantId) -> set[str]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return {str(i) for i in conn.execute(text("SELECT id FROM change_events")).scalars()}


@contextmanager
def deliverer(**env: str) -> Iterator[Any]:
    with worker(processes=1, threads=8, queues=("deliver",), env={**FAST, **env}) as proc:
        yield proc


def in_order(received: list[Any], key: str = "conversation") -> dict[str, list[int]]:
    """Each conversation's event numbers in the order the receiver got them (repeats collapsed)."""
    seen: dict[str, list[int]] = {}
    for r in received:
        data = r.json["data"]
        numbers = seen.setdefault(data[key], [])
        if not numbers or numbers[-1] != data["n"]:
            numbers.append(data["n"])
    return seen


def test_events_arrive_signed_and_in_order_per_conversation_under_concurrency(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    conversations = [uuid.uuid4() for _ in range(6)]
    with receiver() as rx:
        rx.answers["/feed"] = lambda r, n: (200, {}, random.random() * 0.03, None)
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        with deliverer():
            def writer(part: list[uuid.UUID]) -> None:
                for n in range(15):
                    record(app_engine, tenant, [Change("message.received", {"conversation": str(c), "n": n},
                                                       conversation_id=c) for c in part])
            threads = [threading.Thread(target=writer, args=(conversations[i::3],)) for i in range(3)]
            for t in threads:
                t.start()
            record(app_engine, tenant, [Change("budget.alert", {"conversation": "none", "n": i}) for i in range(5)])
            for t in threads:
                t.join()
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 95), timeout=90)
        got = rx.on("/feed")
    assert all(r.verified_by == [secret] for r in got)
    assert {r.webhook_id for r in got} == event_ids(app_engine, tenant)
    order = in_order([r for r in got if r.json["data"]["conversation"] != "none"])
    assert order == {str(c): list(range(15)) for c in conversations}
    first = got[0].json
    assert set(first) == {"type", "timestamp", "data"} and first["type"] in ("message.received", "budget.alert")
    # Several conversations were in flight at once: another conversation's event arrived between two of one's.
    assert any(len({r.json["data"]["conversation"] for r in got[i:i + 6]}) > 1 for i in range(len(got) - 6))


def test_an_outage_of_the_receiver_is_retried_until_delivered_and_retry_after_is_honoured(
        app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    conversation = uuid.uuid4()
    calls: list[float] = []

    def down_then_up(r: Any, n: int) -> tuple[int, dict[str, str], float, bytes | None]:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            return 503, {}, 0.0, b"down for maintenance"
        if len(calls) == 4:
            return 429, {"Retry-After": "2"}, 0.0, None
        return 200, {}, 0.0, None

    with receiver() as rx:
        rx.answers["/feed"] = down_then_up
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        with deliverer():
            record(app_engine, tenant, [Change("message.received", {"conversation": "c", "n": n},
                                               conversation_id=conversation) for n in range(3)])
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 3), timeout=60)
        got = rx.on("/feed")
    rows = attempts(app_engine, tenant, endpoint)
    assert [r.attempts for r in rows] == [5, 1, 1]  # 3 x 503 and a 429 on the first, then one each
    assert rows[0].last_status_code == 200 and rows[0].last_error is None
    assert calls[4] - calls[3] >= 1.9  # the 429's Retry-After: 2, not the schedule's 300 ms
    assert in_order(got) == {"c": [0, 1, 2]}


def test_a_killed_delivery_worker_loses_nothing_and_repeats_are_identifiable(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    conversations = [uuid.uuid4() for _ in range(4)]
    with receiver() as rx:
        # The first try of each event hangs a while, so the worker is killed with deliveries in flight.
        rx.answers["/feed"] = lambda r, n: (200, {}, 1.0 if n == 1 else 0.0, None)
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        with deliverer() as first:
            record(app_engine, tenant, [Change("message.received", {"conversation": str(c), "n": n},
                                               conversation_id=c) for n in range(5) for c in conversations])
            wait_for(lambda: len(rx.on("/feed")) >= 4, timeout=60)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
        delivered_before = sum(r.status == "delivered" for r in attempts(app_engine, tenant, endpoint))
        assert delivered_before < 20
        with deliverer():
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 20), timeout=90)
        got = rx.on("/feed")
    ids = [r.webhook_id for r in got]
    assert set(ids) == event_ids(app_engine, tenant)  # every event, each under its own webhook-id
    assert len(ids) > len(set(ids))  # the ones in flight at the kill came again, with the same id
    assert in_order(got) == {str(c): list(range(5)) for c in conversations}


def test_a_redis_that_lost_every_job_loses_no_delivery(app_engine: Engine, redis_client: redis.Redis) -> None:
    tenant = new_tenant(app_engine)
    with receiver() as rx:
        rx.answers["/feed"] = lambda r, n: (503 if n == 1 else 200, {}, 0.0, None)
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        with deliverer():
            record(app_engine, tenant, [Change("contact.created", {"n": n}) for n in range(10)])
            wait_for(lambda: len(rx.on("/feed")) >= 1, timeout=60)
            redis_client.flushall()  # as a Redis restarted without its data: wake-ups and retries gone
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 10), timeout=60)
        assert {r.webhook_id for r in rx.on("/feed") if r.verified_by} == event_ids(app_engine, tenant)


def test_a_hanging_receiver_delays_no_other_conversation_and_no_other_endpoint(app_engine: Engine) -> None:
    slow_tenant, other_tenant = new_tenant(app_engine), new_tenant(app_engine)
    stuck, free = uuid.uuid4(), uuid.uuid4()
    with receiver() as rx:
        # The stuck conversation's event hangs past the 3 s timeout on its first try.
        rx.answers["/slow"] = lambda r, n: (200, {}, 6.0 if r.json["data"].get("hang") and n == 1 else 0.0, None)
        slow, slow_secret = new_endpoint(app_engine, slow_tenant, rx.url + "/slow")
        other, other_secret = new_endpoint(app_engine, other_tenant, rx.url + "/other")
        rx.secrets.update({"/slow": [slow_secret], "/other": [other_secret]})
        with deliverer(INTAKE_WEBHOOK_TIMEOUT_SECONDS="3"):
            record(app_engine, slow_tenant, [Change("message.received", {"hang": True}, conversation_id=stuck),
                                             Change("message.received", {"n": 1}, conversation_id=free)])
            wait_for(lambda: len(rx.on("/slow")) == 2, timeout=30)
            hung_at = time.monotonic()
            record(app_engine, slow_tenant, [Change("message.received", {"n": 2}, conversation_id=free)])
            record(app_engine, other_tenant, [Change("contact.created", {"n": 1})])
            wait_for(lambda: len(rx.on("/slow")) == 3 and len(rx.on("/other")) == 1, timeout=30, interval=0.02)
            answered = time.monotonic() - hung_at
            wait_for(lambda: all_delivered(app_engine, slow_tenant, slow, 3), timeout=60)
    assert answered < 2.5  # both arrived while the stuck event was still waiting for its answer
    assert sorted(str(r.json["data"].get("n")) for r in rx.on("/slow")[:3]) == ["1", "2", "None"]
    stuck_row = next(r for r in attempts(app_engine, slow_tenant, slow) if r.conversation_id == stuck)
    assert stuck_row.attempts == 2  # timed out once, delivered on its retry
    assert all_delivered(app_engine, other_tenant, other, 1)


def test_during_a_rotation_deliveries_carry_both_signatures(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    endpoints = Endpoints(box(), allow_private=True)
    with receiver() as rx:
        endpoint, old = new_endpoint(app_engine, tenant, rx.url + "/feed")
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            new = endpoints.rotate(conn, endpoint, RotateEndpointSecret(overlap_seconds=3600), audit.Actor("tests"),
                                   datetime.now(UTC)).secret
        rx.secrets["/feed"] = [old, new]
        with deliverer():
            record(app_engine, tenant, [Change("contact.created", {"n": 1})])
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 1), timeout=60)
            with app_engine.begin() as conn:
                bind_tenant(conn, tenant)
                newest = endpoints.rotate(conn, endpoint, RotateEndpointSecret(overlap_seconds=0),
                                          audit.Actor("tests"), datetime.now(UTC)).secret
            rx.secrets["/feed"] = [old, new, newest]
            record(app_engine, tenant, [Change("contact.created", {"n": 2})])
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 2), timeout=60)
    during, after = rx.on("/feed")
    assert during.verified_by == [old, new] and len(during.headers["webhook-signature"].split(" ")) == 2
    assert after.verified_by == [newest] and len(after.headers["webhook-signature"].split(" ")) == 1


def test_an_endpoint_failing_past_its_window_is_given_up_on_then_disabled_and_audited(
        app_engine: Engine, admin_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    with receiver() as rx:
        rx.answers["/feed"] = lambda r, n: (500, {}, 0.0, b"x" * 10_000)
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        with deliverer(INTAKE_WEBHOOK_RETRY_SCHEDULE="100ms,100ms", INTAKE_WEBHOOK_DISABLE_AFTER="2s"):
            record(app_engine, tenant, [Change("contact.created", {"n": 1})])
            wait_for(lambda: [r.status for r in attempts(app_engine, tenant, endpoint)] == ["failed"], timeout=30)
            first = attempts(app_engine, tenant, endpoint)[0]
            with app_engine.begin() as conn:
                bind_tenant(conn, tenant)
                assert Endpoints(box(), allow_private=True).get(conn, endpoint).enabled  # not yet: 2 s
            # The window is measured by the database's clock; the next failure after it disables the endpoint.
            wait_for(lambda: _age_of_failure(app_engine, tenant, endpoint) > 2.0, timeout=30)
            record(app_engine, tenant, [Change("contact.created", {"n": 2})])
            wait_for(lambda: not _enabled(app_engine, tenant, endpoint), timeout=30)
            sent = len(rx.on("/feed"))
            record(app_engine, tenant, [Change("contact.created", {"n": 3})])
            # A disabled endpoint is not due, however far its feed moves, and a pass over it sends nothing.
            with app_engine.begin() as conn:
                assert endpoint not in [e for _, e in due(conn)]
            policy = Policy(retry_delays=(0.1,), disable_after=timedelta(seconds=2), timeout=2, batch=4,
                            allow_private=True)
            assert deliver(app_engine, box(), tenant, endpoint, policy).sent == 0
            assert len(rx.on("/feed")) == sent
    assert first.attempts == 3 and first.last_status_code == 500
    assert first.response_excerpt == "x" * 2048  # the body read up to 2 KiB, no further
    with admin_engine.begin() as conn:
        row = conn.execute(text("SELECT actor, after FROM audit_logs WHERE subject_id = :s AND "
                                "action = 'webhook_endpoint.disable'"), {"s": str(endpoint)}).one()
    assert row.actor == "system:webhooks" and "no successful delivery since" in row.after["disabled_reason"]


def _enabled(engine: Engine, tenant: TenantId, endpoint: uuid.UUID) -> bool:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return bool(Endpoints(box(), allow_private=True).get(conn, endpoint).enabled)


def _age_of_failure(engine: Engine, tenant: TenantId, endpoint: uuid.UUID) -> float:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        age = conn.execute(text("SELECT extract(epoch FROM now() - failing_since) FROM webhook_endpoints "
                                "WHERE id = :e"), {"e": endpoint}).scalar()
    return float(age or 0)


def test_a_target_that_became_unsafe_is_refused_at_delivery_and_redirects_are_not_followed(
        app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    policy = Policy(retry_delays=(0.1,), disable_after=timedelta(days=5), timeout=2, batch=4, allow_private=False)
    with receiver() as rx:
        rx.answers["/moved"] = lambda r, n: (302, {"Location": rx.url + "/elsewhere"}, 0.0, None)
        loopback, _ = new_endpoint(app_engine, tenant, rx.url + "/feed")
        record(app_engine, tenant, [Change("contact.created", {"n": 1})])
        done = deliver(app_engine, box(), tenant, loopback, policy)
        assert (done.sent, done.delivered) == (1, 0) and rx.on("/feed") == []
        row = attempts(app_engine, tenant, loopback)[0]
        assert "loopback" in row.last_error and row.last_status_code is None

        other = new_tenant(app_engine)
        moved, moved_secret = new_endpoint(app_engine, other, rx.url + "/moved")
        rx.secrets["/moved"] = [moved_secret]
        record(app_engine, other, [Change("contact.created", {"n": 1})])
        open_policy = Policy(**{**policy.__dict__, "allow_private": True})
        assert deliver(app_engine, box(), other, moved, open_policy).delivered == 0
        assert len(rx.on("/moved")) == 1 and rx.on("/elsewhere") == []
        assert attempts(app_engine, other, moved)[0].last_status_code == 302
