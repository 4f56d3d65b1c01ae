"""SLA clocks: due times for the first response and the resolution of a conversation, and their breaches.

A tenant keeps one policy per priority in `sla_policies` (working minutes to a first response and to a
resolution, counted in its business hours, time zone and holidays). A conversation's clock starts when it
opens or reopens (`sla_started_at`, at its first new message; a conversation has no priority until AI
classification gives it one, and until then the `normal` policy applies). When classification changes the
priority, the due times are computed again from the same start with the new priority's policy.

The clock marks a breach once per open period (`sla_breached_at`): when the resolution is overdue, or the
first response is, that is no outbound message was sent between the start and the first-response due time.
A reopen starts a new period with fresh due times and no breach. Each breach is told to the change feed
(`sla.breached`) in the transaction that marks it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, text

from db import batch, direct
from db.tenancy import TenantId
from pipelines import changes
from pipelines.lifecycle.business_hours import SEARCH_DAYS, Calendar, CalendarError, parse_calendar, zone_named
from pipelines.lifecycle.errors import LifecycleError

PRIORITIES = ("low", "normal", "high", "urgent")
DEFAULT_PRIORITY = "normal"
MAX_MINUTES = 366 * 24 * 60
_NAMES = {"first_response_minutes": "first response", "resolution_minutes": "resolution"}

POLICIES = text("""
SELECT priority, first_response_minutes, resolution_minutes, time_zone, business_hours, holidays
FROM sla_policies WHERE tenant_id = :t
""")
START = text("""
UPDATE conversations c SET sla_started_at = u.at, first_response_due_at = u.first_due,
       resolution_due_at = u.resolution_due, sla_breached_at = NULL
FROM json_to_recordset(CAST(:rows AS json)) AS u(id uuid, at timestamptz, first_due timestamptz,
                                                 resolution_due timestamptz)
WHERE c.tenant_id = :t AND c.id = ANY(CAST(:ids AS uuid[])) AND c.id = u.id AND c.sla_started_at IS NULL
""")
STARTED = text("""
SELECT sla_started_at FROM conversations WHERE tenant_id = :t AND id = :id AND status = 'open'
""")
MOVE = text("""
UPDATE conversations SET first_response_due_at = :first_due, resolution_due_at = :resolution_due
WHERE tenant_id = :t AND id = :id
  AND (first_response_due_at IS DISTINCT FROM :first_due OR resolution_due_at IS DISTINCT FROM :resolution_due)
""")
# Breaches, a bounded batch at a time; `resolution` tells which due time passed (the resolution wins).
BREACH = text("""
UPDATE conversations c SET sla_breached_at = :now
WHERE c.tenant_id = :t AND c.id IN (
    SELECT o.id FROM conversations o
    WHERE o.tenant_id = :t AND o.status = 'open' AND o.sla_breached_at IS NULL
      AND (o.resolution_due_at <= :now
           OR (o.first_response_due_at <= :now
               AND NOT EXISTS (SELECT 1 FROM messages m
                               WHERE m.tenant_id = o.tenant_id AND m.conversation_id = o.id
                                 AND m.direction = 'outbound'
                                 AND m.sent_at >= o.sla_started_at AND m.sent_at <= o.first_response_due_at)))
    ORDER BY o.id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING c.id, coalesce(c.resolution_due_at <= :now, false) AS resolution, c.status, c.priority,
          c.first_response_due_at, c.resolution_due_at
""")
UPSERT = text("""
INSERT INTO sla_policies (tenant_id, priority, first_response_minutes, resolution_minutes, time_zone,
                          business_hours, holidays)
VALUES (:t, :priority, :first, :resolution, :zone, CAST(:hours AS jsonb), CAST(:holidays AS date[]))
ON CONFLICT (tenant_id, priority) DO UPDATE SET
    first_response_minutes = EXCLUDED.first_response_minutes, resolution_minutes = EXCLUDED.resolution_minutes,
    time_zone = EXCLUDED.time_zone, business_hours = EXCLUDED.business_hours, holidays = EXCLUDED.holidays,
    updated_at = now()
RETURNING id
""")


class PolicyError(LifecycleError):
    """An SLA policy that cannot be kept: unknown priority, bad durations or calendar. `field` names the
    value at fault as the admin API names it (`resolution_minutes`), so its 422 can say which."""

    def __init__(self, message: str, field: str = "priority") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Policy:
    priority: str
    first_response_minutes: int | None
    resolution_minutes: int | None
    calendar: Calendar

    def due(self, start: datetime) -> tuple[datetime | None, datetime | None]:
        """(first response due, resolution due) for a clock started at `start`; None for a time the calendar
        does not reach (its holidays may close it for longer than it looks ahead). Ingestion computes these:
        a calendar must never fail a delivery."""
        return self._add(start, self.first_response_minutes), self._add(start, self.resolution_minutes)

    def _add(self, start: datetime, minutes: int | None) -> datetime | None:
        if not minutes:
            return None
        try:
            return self.calendar.add(start, minutes)
        except CalendarError:
            return None


@dataclass
class Breaches:
    first_response: int = 0
    resolution: int = 0


def load_policies(conn: Connection, tenant: TenantId) -> dict[str, Policy]:
    policies = {}
    for row in direct.rows(conn, POLICIES, {"t": tenant}):
        try:
            calendar = parse_calendar(row.time_zone, row.business_hours, row.holidays or ())
        except CalendarError:
            continue  # only written through `set_policy`, which validates: a hand-edited row is skipped
        policies[row.priority] = Policy(row.priority, row.first_response_minutes, row.resolution_minutes, calendar)
    return policies


def start_clocks(conn: Connection, tenant: TenantId,
                 unstarted: Sequence[tuple[uuid.UUID, datetime, str | None]]) -> int:
    """Start the clocks of open conversations that have none (just opened or reopened): each given as its id,
    the time its clock starts and its priority. The ingest batch learns which they are from the statement that
    counts their new messages, so a batch that opens nothing spends no statement here."""
    if not unstarted:
        return 0
    policies = load_policies(conn, tenant)
    rows: list[dict[str, Any]] = []
    for conversation_id, at, priority in sorted(unstarted):
        policy = policies.get(priority or DEFAULT_PRIORITY)
        first, resolution = policy.due(at) if policy else (None, None)
        rows.append({"id": conversation_id, "at": at, "first_due": first, "resolution_due": resolution})
    direct.run(conn, START, {"t": tenant, "ids": batch.uuids(r["id"] for r in rows), "rows": batch.rows(rows)})
    return len(rows)


def reprioritize(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID, priority: str) -> bool:
    """Move an open conversation's due times to its new priority's policy; True when they moved."""
    started = direct.first(conn, STARTED, {"t": tenant, "id": conversation_id})
    start = None if started is None else started.sla_started_at
    if start is None:
        return False
    policy = load_policies(conn, tenant).get(priority)
    first, resolution = policy.due(start) if policy else (None, None)
    moved = direct.run(conn, MOVE, {"t": tenant, "id": conversation_id, "first_due": first,
                                    "resolution_due": resolution})
    return bool(moved)


def mark_breaches(conn: Connection, tenant: TenantId, now: datetime, *, limit: int = 1000) -> Breaches:
    """Mark the open conversations whose due time passed by `now` (each once); how many of each kind.

    Their `sla.breached` events are recorded last: the caller commits right after."""
    breaches = Breaches()
    events = []
    for row in direct.rows(conn, BREACH, {"t": tenant, "now": now, "limit": limit}):
        if row.resolution:
            breaches.resolution += 1
        else:
            breaches.first_response += 1
        # The conversation's columns the clock's role may read (migration 0012): the clock knows no texts.
        events.append(changes.Change("sla.breached", {
            "conversation": {"id": row.id, "status": row.status, "priority": row.priority},
            "breach": "resolution" if row.resolution else "first_response", "breached_at": now,
            "first_response_due_at": row.first_response_due_at, "resolution_due_at": row.resolution_due_at},
            conversation_id=row.id, subject_id=row.id))
    changes.record(conn, tenant, events)
    return breaches


def set_policy(conn: Connection, tenant: TenantId, priority: str, *, first_response_minutes: int | None,
               resolution_minutes: int | None, time_zone: str = "UTC", business_hours: object = None,
               holidays: Sequence[str] = ()) -> uuid.UUID:
    """Create or replace the tenant's policy for `priority`, after checking every value."""
    if priority not in PRIORITIES:
        raise PolicyError(f"priority must be one of {', '.join(PRIORITIES)}")
    durations = {"first_response_minutes": first_response_minutes, "resolution_minutes": resolution_minutes}
    for field, minutes in durations.items():
        if minutes is not None and not 0 < minutes <= MAX_MINUTES:
            raise PolicyError(f"{_NAMES[field]} must be between 1 minute and 366 days", field)
    if first_response_minutes is None and resolution_minutes is None:
        raise PolicyError("give a first-response time, a resolution time, or both", "first_response_minutes")
    try:
        zone_named(time_zone)
    except CalendarError as exc:
        raise PolicyError(str(exc), "time_zone") from None
    try:
        calendar = parse_calendar(time_zone, business_hours, holidays)
    except CalendarError as exc:
        raise PolicyError(str(exc), "holidays" if "holiday" in str(exc) else "business_hours") from None
    _reachable(calendar, durations)
    row = conn.execute(UPSERT, {
        "t": tenant, "priority": priority, "first": first_response_minutes, "resolution": resolution_minutes,
        "zone": calendar.zone.key, "hours": None if business_hours is None else orjson.dumps(business_hours).decode(),
        "holidays": sorted(calendar.holidays)}).scalar_one()
    return uuid.UUID(str(row))


def _reachable(calendar: Calendar, durations: dict[str, int | None]) -> None:
    """Refuse working times the calendar does not open for within its look-ahead (366 days of working minutes
    in a 40-hour week take over four years): such a policy would never give a due time."""
    now = datetime.now(UTC)
    for field, minutes in durations.items():
        if minutes:
            try:
                calendar.add(now, minutes)
            except CalendarError:
                raise PolicyError(f"{minutes} working minutes do not fit in the business hours of the next "
                                  f"{SEARCH_DAYS} days; shorten the time or open longer", field) from None


def list_policies(conn: Connection, tenant: TenantId) -> list[dict[str, Any]]:
    rows = conn.execute(text(
        "SELECT priority, first_response_minutes, resolution_minutes, time_zone, business_hours, holidays "
        "FROM sla_policies WHERE tenant_id = :t ORDER BY array_position(CAST(:order AS text[]), priority)"),
        {"t": tenant, "order": list(PRIORITIES)})
    return [{**row._asdict(), "holidays": [d.isoformat() for d in row.holidays]} for row in rows]
