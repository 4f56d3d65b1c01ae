"""SLA clocks: business-hours arithmetic across weekends, holidays and DST; due times set at open and reopen,
moved by a new priority; breaches marked once, by a clock the test drives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines.lifecycle import sla
from pipelines.lifecycle.business_hours import CalendarError, parse_calendar
from tests.factories import deliver, new_inbox

HELSINKI = ZoneInfo("Europe/Helsinki")
OFFICE = {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
ALWAYS = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HELSINKI)


@pytest.mark.parametrize(("start", "minutes", "due"), [
    (local(2026, 11, 30, 10, 0), 60, local(2026, 11, 30, 11, 0)),     # within the day
    (local(2026, 11, 30, 16, 30), 60, local(2026, 12, 1, 9, 30)),     # past closing: on next morning
    (local(2026, 12, 4, 16, 0), 120, local(2026, 12, 7, 10, 0)),      # Friday afternoon: Monday
    (local(2026, 12, 5, 8, 0), 30, local(2026, 12, 7, 9, 30)),        # written on Saturday
    (local(2026, 12, 23, 16, 0), 120, local(2026, 12, 25, 10, 0)),    # Thursday 24th is a holiday
    (local(2026, 10, 23, 16, 0), 120, local(2026, 10, 26, 10, 0)),    # the weekend clocks go back
    (local(2026, 3, 27, 16, 0), 8 * 60, local(2026, 3, 30, 16, 0)),   # the weekend clocks go forward
])
def test_business_hours_skip_nights_weekends_and_holidays(start: datetime, minutes: int, due: datetime) -> None:
    calendar = parse_calendar("Europe/Helsinki", OFFICE, ["2026-12-24"])
    assert calendar.add(start, minutes) == due


def test_a_day_lasts_as_long_as_the_clocks_say() -> None:
    calendar = parse_calendar("Europe/Helsinki", ALWAYS)
    # 2026-10-25 has 25 hours in Helsinki, 2026-03-29 has 23.
    assert calendar.add(local(2026, 10, 25, 0, 0), 24 * 60) == local(2026, 10, 25, 23, 0)
    assert calendar.add(local(2026, 3, 29, 0, 0), 24 * 60) == local(2026, 3, 30, 1, 0)
    assert parse_calendar("UTC", None).add(local(2026, 3, 29, 0, 0), 90) == local(2026, 3, 29, 1, 30)


@pytest.mark.parametrize(("zone", "hours", "holidays"), [
    ("Mars/Olympus", OFFICE, []),
    ("Europe/Helsinki\x00", OFFICE, []),
    ("x" * 10_000, OFFICE, []),
    ("UTC", {"mon": [["09:00", "25:00"]]}, []),
    ("UTC", {"mon": [["17:00", "09:00"]]}, []),
    ("UTC", {"funday": [["09:00", "17:00"]]}, []),
    ("UTC", {"mon": "09:00-17:00"}, []),
    ("UTC", {"mon": [["09:00"]]}, []),
    ("UTC", {"mon": [[9, 17]]}, []),
    ("UTC", {"mon": []}, []),
    ("UTC", {"mon": [["09:00", "17:00"]] * 100}, []),
    ("UTC", ["mon"], []),
    ("UTC", OFFICE, ["2026-02-30"]),
    ("UTC", OFFICE, ["tomorrow"]),
    ("UTC", {"mon": [["09:00", "17:00"], ["12:00", "18:00"]]}, []),  # an hour counted twice
    ("UTC", {"mon": [["10:00", "11:00"], ["09:00", "24:00"]]}, []),
])
def test_a_calendar_that_makes_no_sense_is_refused(zone: str, hours: object, holidays: list[str]) -> None:
    with pytest.raises(CalendarError):
        parse_calendar(zone, hours, holidays)


def test_intervals_count_in_the_order_of_the_day_whatever_order_they_are_given() -> None:
    lunch_first = parse_calendar("UTC", {"mon": [["13:00", "17:00"], ["09:00", "12:00"]]})
    monday = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    assert lunch_first.add(monday, 60) == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert lunch_first.add(monday, 4 * 60) == datetime(2026, 12, 7, 14, 0, tzinfo=UTC)


def message(external_id: str, sent_at: datetime, email: str, text_: str = "Where is my order?") -> tuple[bytes, str]:
    return orjson.dumps({"id": external_id, "type": "message", "sent_at": sent_at.isoformat(), "text": text_,
                         "contact": {"email": email}}), "application/json"


def conversation(app_engine: Engine, tenant: TenantId) -> dict[str, Any]:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        return dict(conn.execute(text(
            "SELECT id, status, sla_started_at, first_response_due_at, resolution_due_at, sla_breached_at "
            "FROM conversations ORDER BY created_at DESC LIMIT 1")).mappings().one())


def breaches(app_engine: Engine, tenant: TenantId, now: datetime) -> tuple[int, int]:
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        found = sla.mark_breaches(conn, tenant, now)
    return found.first_response, found.resolution


def test_due_times_start_at_open_move_with_priority_and_breach_once(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    tenant = inbox.tenant_id
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        for priority, first_minutes, resolution_minutes in (("normal", 60, 8 * 60), ("urgent", 15, 120)):
            sla.set_policy(conn, tenant, priority, first_response_minutes=first_minutes,
                           resolution_minutes=resolution_minutes,
                           time_zone="Europe/Helsinki", business_hours=OFFICE, holidays=["2026-12-24"])
    opened = local(2026, 11, 20, 16, 30)  # a Friday afternoon
    body, content_type = message("m1", opened, "erik@example.se")
    deliver(app_engine, inbox, body, content_type, headers={"webhook-id": "w1"})
    first = conversation(app_engine, tenant)
    assert first["sla_started_at"] == opened
    assert first["first_response_due_at"] == local(2026, 11, 23, 9, 30)
    assert first["resolution_due_at"] == local(2026, 11, 23, 16, 30)

    # AI classification finds it urgent (as pipelines.assist stores it): the same start, the urgent policy.
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE conversations SET priority = 'urgent' WHERE id = :id"), {"id": first["id"]})
        assert sla.reprioritize(conn, tenant, first["id"], "urgent")
    moved = conversation(app_engine, tenant)
    assert (moved["first_response_due_at"], moved["resolution_due_at"]) == (local(2026, 11, 20, 16, 45),
                                                                             local(2026, 11, 23, 10, 30))

    # Not before it is due; once when it is; never again.
    assert breaches(app_engine, tenant, local(2026, 11, 20, 16, 44)) == (0, 0)
    assert breaches(app_engine, tenant, local(2026, 11, 20, 16, 46)) == (1, 0)
    assert breaches(app_engine, tenant, local(2026, 11, 25, 0, 0)) == (0, 0)
    assert conversation(app_engine, tenant)["sla_breached_at"] == local(2026, 11, 20, 16, 46)

    # Resolved, then reopened by a new message: a new period with fresh due times and no breach.
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("UPDATE conversations SET status = 'resolved', resolved_at = :at"),
                     {"at": local(2026, 11, 24, 12, 0)})
    body, content_type = message("m2", local(2026, 11, 24, 13, 0), "erik@example.se", "One more thing")
    deliver(app_engine, inbox, body, content_type, headers={"webhook-id": "w2"})
    reopened = conversation(app_engine, tenant)
    assert reopened["id"] == first["id"] and reopened["status"] == "open"
    assert reopened["sla_breached_at"] is None
    assert reopened["sla_started_at"] == local(2026, 11, 24, 13, 0)
    assert reopened["first_response_due_at"] == local(2026, 11, 24, 13, 15)  # still urgent

    # An agent answers in time: the first response is kept; the resolution is still due.
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text(
            "INSERT INTO messages (tenant_id, inbox_id, conversation_id, direction, external_id, content, sent_at) "
            "VALUES (:t, :i, :c, 'outbound', 'reply-1', 'On its way', :at)"),
            {"t": tenant, "i": inbox.id, "c": first["id"], "at": local(2026, 11, 24, 13, 10)})
    assert breaches(app_engine, tenant, local(2026, 11, 24, 14, 31)) == (0, 0)
    assert breaches(app_engine, tenant, local(2026, 11, 25, 10, 1)) == (0, 1)


def test_without_a_policy_a_conversation_has_no_due_times(app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    body, content_type = message("m1", datetime.now(UTC) - timedelta(minutes=5), "anna@example.fi")
    deliver(app_engine, inbox, body, content_type, headers={"webhook-id": "w1"})
    row = conversation(app_engine, inbox.tenant_id)
    assert row["sla_started_at"] is not None
    assert row["first_response_due_at"] is None and row["resolution_due_at"] is None
    assert breaches(app_engine, inbox.tenant_id, datetime.now(UTC) + timedelta(days=365)) == (0, 0)


@pytest.mark.parametrize(("priority", "first", "resolution"), [
    ("critical", 60, None), ("normal", 0, None), ("normal", -5, 60), ("normal", None, None),
    ("normal", 10**9, None),
])
def test_a_policy_with_bad_durations_is_refused(app_engine: Engine, priority: str, first: int | None,
                                                resolution: int | None) -> None:
    inbox = new_inbox(app_engine, "api")
    with app_engine.begin() as conn, pytest.raises(sla.PolicyError):
        bind_tenant(conn, inbox.tenant_id)
        sla.set_policy(conn, inbox.tenant_id, priority, first_response_minutes=first, resolution_minutes=resolution)


def test_a_working_time_the_calendar_never_reaches_is_refused(app_engine: Engine) -> None:
    """366 days of working minutes in a 40-hour week take over four years: refused with a reason."""
    inbox = new_inbox(app_engine, "api")
    with app_engine.begin() as conn, pytest.raises(sla.PolicyError, match="working minutes"):
        bind_tenant(conn, inbox.tenant_id)
        sla.set_policy(conn, inbox.tenant_id, "normal", first_response_minutes=60,
                       resolution_minutes=366 * 24 * 60, business_hours=OFFICE)


def test_a_stored_policy_the_calendar_cannot_meet_never_fails_a_delivery(app_engine: Engine) -> None:
    """A policy written before that check (or closed by holidays) gives no due time, and the message is stored."""
    inbox = new_inbox(app_engine, "api")
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text(
            "INSERT INTO sla_policies (tenant_id, priority, first_response_minutes, resolution_minutes, "
            "time_zone, business_hours) VALUES (:t, 'normal', 60, :long, 'Europe/Helsinki', CAST(:hours AS jsonb))"),
            {"t": inbox.tenant_id, "long": 366 * 24 * 60, "hours": orjson.dumps(OFFICE).decode()})
    opened = local(2026, 11, 30, 10, 0)
    body, content_type = message("m1", opened, "erik@example.se")
    deliver(app_engine, inbox, body, content_type, headers={"webhook-id": "w1"})
    row = conversation(app_engine, inbox.tenant_id)
    assert row["first_response_due_at"] == local(2026, 11, 30, 11, 0)
    assert row["resolution_due_at"] is None
