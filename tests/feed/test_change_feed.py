"""The change feed's writing side: numbered per tenant in commit order, written with the change or not at all."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import changes
from pipelines.changes import Change
from pipelines.inboxes import create_tenant
from tests.processes import wait_for


def new_tenant(engine: Engine) -> TenantId:
    with engine.begin() as conn:
        return create_tenant(conn, "Feed tenant")


def recorded(engine: Engine, tenant: TenantId) -> list[tuple[int, str]]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return [(r.seq, r.type) for r in conn.execute(text("SELECT seq, type FROM change_events ORDER BY seq"))]


def test_each_tenant_numbers_its_changes_from_one_without_gaps(app_engine: Engine) -> None:
    a, b = new_tenant(app_engine), new_tenant(app_engine)
    for tenant, count in ((a, 3), (b, 2), (a, 2)):
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            last = changes.record(conn, tenant, [Change("contact.created", {"n": i}) for i in range(count)])
        assert last == len(recorded(app_engine, tenant))
    assert [seq for seq, _ in recorded(app_engine, a)] == [1, 2, 3, 4, 5]
    assert [seq for seq, _ in recorded(app_engine, b)] == [1, 2]


def test_a_change_that_rolls_back_leaves_no_event_and_no_number(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    with app_engine.connect() as conn:
        with conn.begin() as tx:
            bind_tenant(conn, tenant)
            changes.record(conn, tenant, [Change("contact.created")])
            tx.rollback()
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        changes.record(conn, tenant, [Change("contact.merged")])
    assert recorded(app_engine, tenant) == [(1, "contact.merged")]


def test_numbers_follow_commit_order(app_engine: Engine) -> None:
    """A second writer waits for the first to commit, so a reader that saw seq N never later finds a smaller one."""
    tenant = new_tenant(app_engine)
    first = app_engine.connect()
    first.begin()
    bind_tenant(first, tenant)
    changes.record(first, tenant, [Change("conversation.opened")])
    seqs: list[int | None] = []

    def second() -> None:
        with app_engine.begin() as conn:
            bind_tenant(conn, tenant)
            seqs.append(changes.record(conn, tenant, [Change("conversation.resolved")]))

    thread = threading.Thread(target=second)
    thread.start()

    def waiting() -> int:
        # A transaction of its own each time: pg_stat_activity is a snapshot kept until the transaction ends, so
        # polling inside one would see the first answer forever.
        with app_engine.begin() as watcher:
            return int(watcher.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%intake_record_changes%'")).scalar_one())

    wait_for(lambda: waiting() == 1, timeout=30)
    assert seqs == []  # still waiting for the first writer's commit
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert seqs == [2]
    assert recorded(app_engine, tenant) == [(1, "conversation.opened"), (2, "conversation.resolved")]


def test_subscribers_are_notified_at_commit_with_the_last_seq(app_engine: Engine, stack: dict[str, str]) -> None:
    tenant = new_tenant(app_engine)
    url = stack["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN intake_changes")
        with app_engine.connect() as conn:
            conn.begin()
            bind_tenant(conn, tenant)
            changes.record(conn, tenant, [Change("message.received"), Change("conversation.opened")])
            assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # nothing before the commit
            conn.commit()
        received = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert received == [f"{tenant}:2"]


def test_an_unknown_type_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="unknown change type"):
        Change("message.exploded")


def test_events_keep_their_ids_data_and_subjects(app_engine: Engine) -> None:
    tenant = new_tenant(app_engine)
    subject, conversation = uuid.uuid4(), uuid.uuid4()
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        changes.record(conn, tenant, [Change("message.received", {"message": {"content": "héllo ✓"}},
                                             conversation_id=conversation, subject_id=subject)])
        row = conn.execute(text("SELECT id, data, conversation_id, subject_id FROM change_events")).one()
    assert isinstance(row.id, uuid.UUID)
    assert (row.data, row.conversation_id, row.subject_id) == ({"message": {"content": "héllo ✓"}},
                                                               conversation, subject)
