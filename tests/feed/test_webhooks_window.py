"""A pass keeps deliveries in flight: answers are recorded and the next events claimed as they come in, in a
few statements per round whatever its size. Order per conversation holds with many passes at once, a slow
answer holds back no other conversation within a pass, and an endpoint whose receiver hangs holds back no
other endpoint of its tenant."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, event, text

from db.tenancy import bind_tenant
from pipelines.changes import Change
from pipelines.webhooks.delivery import Policy, claim, deliver, plan, record
from pipelines.webhooks.sending import Outcome
from tests.feed.test_webhooks_delivery import FAST, all_delivered, attempts, box, in_order, new_endpoint, new_tenant
from tests.feed.test_webhooks_delivery import record as record_changes
from tests.processes import wait_for, worker
from tests.receiver import receiver

POLICY = Policy(retry_delays=(0.3,), disable_after=timedelta(days=5), timeout=5, batch=8, allow_private=True)


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine runs inside the block."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_round_records_and_claims_in_a_fixed_number_of_statements(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    endpoint, _ = new_endpoint(app_engine, tenant, "http://127.0.0.1:9/feed")
    record_changes(app_engine, tenant, [Change("contact.created", {"n": n}) for n in range(30)])
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        assert plan(conn, tenant, endpoint) == 30
        with statements(app_engine) as seen:
            leased = claim(conn, tenant, endpoint, 20, POLICY.lease)
        assert len(leased) == 20 and len(seen) == 1  # leased and loaded together
        outcomes = [Outcome(d.attempt_id, d.attempts, True, status_code=204, excerpt="") for d in leased[:12]]
        outcomes += [Outcome(d.attempt_id, d.attempts, False, status_code=503, error="HTTP 503", excerpt="busy")
                     for d in leased[12:]]
        with statements(app_engine) as seen:
            record(conn, tenant, endpoint, outcomes, POLICY)
        assert len(seen) == 2  # one for the twelve delivered (and the endpoint's health), one for the eight others
    rows = attempts(app_engine, tenant, endpoint)
    assert [r.status for r in rows] == ["delivered"] * 12 + ["pending"] * 18
    assert {r.last_status_code for r in rows[:12]} == {204} and {r.last_error for r in rows[12:20]} == {"HTTP 503"}
    assert [r.attempts for r in rows[12:20]] == [1] * 8 and all(r.leased_until is None for r in rows)


def test_a_slow_answer_holds_back_no_other_conversation_within_a_pass(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    slow, fast = uuid.uuid4(), uuid.uuid4()
    with receiver() as rx:
        rx.answers["/feed"] = lambda r, n: (200, {}, 2.0 if r.json["data"].get("slow") else 0.0, None)
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        record_changes(app_engine, tenant, [Change("message.received", {"slow": True, "n": 0}, conversation_id=slow)]
                       + [Change("message.received", {"n": n}, conversation_id=fast) for n in range(12)])
        started = time.monotonic()
        done = deliver(app_engine, box(), tenant, endpoint, POLICY, seconds=30)
        took = time.monotonic() - started
        got = rx.on("/feed")
    assert (done.sent, done.delivered, done.more) == (13, 13, False)
    assert took < 10  # the pass ended when nothing was left, long before its 30 s
    slow_sent = next(r.at for r in got if r.json["data"].get("slow"))
    fast_arrivals = [r.at for r in got if not r.json["data"].get("slow")]
    # Each of the fast conversation's events waited for the one before it, not for the slow answer (2 s).
    assert max(fast_arrivals) - slow_sent < 1.5
    assert [r.json["data"]["n"] for r in got if not r.json["data"].get("slow")] == list(range(12))
    assert all(r.verified_by == [secret] for r in got)
    assert all_delivered(app_engine, tenant, endpoint, 13)


def test_order_per_conversation_holds_with_many_passes_in_flight(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    conversations = [uuid.uuid4() for _ in range(40)]
    with receiver() as rx:
        rx.answers["/feed"] = lambda r, n: (503 if random.random() < 0.05 else 200, {},
                                            random.random() * 0.02, None)
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]
        # Two processes, a window of 8: passes over the one endpoint overlap while the writers go on.
        with worker(processes=2, threads=8, queues=("deliver",), env={**FAST, "INTAKE_WEBHOOK_BATCH": "8"}):
            def writer(part: list[uuid.UUID]) -> None:
                for n in range(8):
                    record_changes(app_engine, tenant, [Change("message.received", {"conversation": str(c), "n": n},
                                                               conversation_id=c) for c in part])
            threads = [threading.Thread(target=writer, args=(conversations[i::4],)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_for(lambda: all_delivered(app_engine, tenant, endpoint, 320), timeout=120)
        got = [r for r in rx.on("/feed") if r.verified_by]
    # A 503 is tried again before anything later of its conversation; repeats collapse in `in_order`.
    assert in_order(got) == {str(c): list(range(8)) for c in conversations}
    assert len({r.webhook_id for r in got}) == 320


def test_a_hanging_endpoint_holds_back_no_other_endpoint_of_its_tenant(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    with receiver() as rx:
        rx.answers["/hangs"] = lambda r, n: (200, {}, 8.0, None)
        rx.answers["/fast"] = lambda r, n: (200, {}, 0.0, None)
        _, hangs_secret = new_endpoint(app_engine, tenant, rx.url + "/hangs", event_types=["contact.created"])
        fast, fast_secret = new_endpoint(app_engine, tenant, rx.url + "/fast", event_types=["message.received"])
        rx.secrets.update({"/hangs": [hangs_secret], "/fast": [fast_secret]})
        with worker(processes=1, threads=4, queues=("deliver",), env={**FAST, "INTAKE_WEBHOOK_TIMEOUT_SECONDS": "6"}):
            # A window's worth of the hanging endpoint's deliveries in flight first, holding their threads.
            record_changes(app_engine, tenant, [Change("contact.created", {"n": n}) for n in range(40)])
            wait_for(lambda: len(rx.on("/hangs")) >= 32, timeout=30, interval=0.05)
            started = time.monotonic()
            conversations = [uuid.uuid4() for _ in range(6)]
            record_changes(app_engine, tenant, [Change("message.received", {"conversation": str(c), "n": n},
                                                       conversation_id=c) for n in range(10) for c in conversations])
            wait_for(lambda: all_delivered(app_engine, tenant, fast, 60), timeout=30, interval=0.05)
            took = time.monotonic() - started
    assert took < 5.0  # all sixty delivered, each conversation in turn, in less than the hanging one's timeout
    # ... while a hanging delivery sent before they were recorded was still waiting for its answer (6 s).
    last_hung = max(r.at for r in rx.on("/hangs") if r.at <= started)
    assert max(r.at for r in rx.on("/fast")) < last_hung + 6.0
    assert in_order([r for r in rx.on("/fast") if r.verified_by]) == {str(c): list(range(10)) for c in conversations}


def test_a_disabled_endpoint_is_left_mid_pass_and_what_was_in_flight_is_recorded(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    with receiver() as rx:
        endpoint, secret = new_endpoint(app_engine, tenant, rx.url + "/feed")
        rx.secrets["/feed"] = [secret]

        def disable_on_first(r: Any, n: int) -> tuple[int, dict[str, str], float, bytes | None]:
            with app_engine.begin() as conn:
                bind_tenant(conn, tenant)
                conn.execute(text("UPDATE webhook_endpoints SET enabled = false WHERE id = :e"), {"e": endpoint})
            return 200, {}, 0.0, None

        rx.answers["/feed"] = disable_on_first
        record_changes(app_engine, tenant, [Change("message.received", {"n": n}, conversation_id=uuid.uuid4())
                                            for n in range(20)])
        done = deliver(app_engine, box(), tenant, endpoint, POLICY, seconds=30)
    assert done.sent == POLICY.batch and done.delivered == POLICY.batch and not done.more
    rows = attempts(app_engine, tenant, endpoint)
    assert sum(r.status == "delivered" for r in rows) == POLICY.batch
    assert all(r.leased_until is None for r in rows)
