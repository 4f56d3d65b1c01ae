"""Business-hours arithmetic: "this many working minutes after that moment", in a tenant's time zone.

A `Calendar` has opening hours per weekday (local wall-clock times), a time zone from the standard library
(`zoneinfo`) and holidays (local dates, closed all day). Time is counted only while open, in real elapsed
time: on the night clocks go forward an open interval 00:00-24:00 lasts 23 hours (a time inside the skipped
hour is read with the offset before the change, as PEP 495 does: an hour later on the new wall clock), and
on the night they go back it lasts 25. No hours at all (`hours=None`) means around the clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pipelines.lifecycle.errors import LifecycleError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A calendar open one minute a year still ends: past this many days without an opening, give up.
SEARCH_DAYS = 3 * 366


class CalendarError(LifecycleError):
    """Business hours, time zone or holidays that do not describe a calendar."""


Interval = tuple[time, time | None]  # None as the end: midnight at the end of the day


@dataclass(frozen=True)
class Calendar:
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    hours: Mapping[int, Sequence[Interval]] | None = None  # weekday (0 = Monday) -> open intervals
    holidays: frozenset[date] = frozenset()

    def add(self, start: datetime, minutes: float) -> datetime:
        """The moment when `minutes` of open time have passed since `start` (an aware datetime)."""
        if start.tzinfo is None:
            raise CalendarError("start must carry a time zone")
        left = timedelta(minutes=minutes)
        if self.hours is None and not self.holidays:
            return (start + left).astimezone(UTC)
        for opens, closes in self._open_intervals(start):
            begin = max(opens, start)
            if begin + left <= closes:
                return (begin + left).astimezone(UTC)
            left -= closes - begin
        raise CalendarError(f"no open time within {SEARCH_DAYS} days")

    def _open_intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals (as UTC datetimes) that end after `start`, in order."""
        day = start.astimezone(self.zone).date() - timedelta(days=1)  # an interval open over midnight
        for _ in range(SEARCH_DAYS):
            if day not in self.holidays:
                for opens, closes in self._day(day):
                    if closes > start:
                        yield opens, closes
            day += timedelta(days=1)

    def _day(self, day: date) -> list[tuple[datetime, datetime]]:
        intervals: Sequence[Interval] = ((time(0), None),) if self.hours is None else self.hours.get(day.weekday(), ())
        result = []
        for opens, closes in intervals:
            begin = self._instant(day, opens)
            end = self._instant(day + timedelta(days=1), time(0)) if closes is None else self._instant(day, closes)
            if end > begin:
                result.append((begin, end))
        return result

    def _instant(self, day: date, at: time) -> datetime:
        """The UTC moment the local wall clock shows `at` on `day` (PEP 495's reading of a skipped time)."""
        return datetime.combine(day, at, tzinfo=self.zone).astimezone(UTC)


# Files in the zone database that are not zones of the world: the machine's own setting (whatever it is
# today), the rules POSIX strings borrow, and IANA's placeholder for "no zone set" (its abbreviation is -00).
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@cache
def iana_zones() -> frozenset[str]:
    """The real IANA zone names (and their links, such as US/Eastern) the zone database here holds.
    Reading the database walks a directory tree (about a third of a second), so it is read once."""
    return frozenset(available_timezones()) - NOT_ZONES


def zone_named(name: object) -> ZoneInfo:
    """The zone of a real IANA name; anything else (a path, `localtime`, `Factory`, a typo) is refused."""
    if not isinstance(name, str) or name not in iana_zones():
        raise CalendarError(f"unknown time zone {str(name)[:64]!r}; use an IANA name such as Europe/Helsinki")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # listed, then gone from the disk
        raise CalendarError(f"unknown time zone {name!r}; use an IANA name such as Europe/Helsinki") from None


def parse_calendar(time_zone: str, business_hours: object, holidays: Sequence[object] = ()) -> Calendar:
    """A calendar from stored or typed values: `{"mon": [["09:00", "17:00"]], ...}` or None (always open)."""
    zone = zone_named(time_zone)
    days = {_holiday(value) for value in holidays}
    if business_hours is None:
        return Calendar(zone, None, frozenset(days))
    if not isinstance(business_hours, Mapping):
        raise CalendarError('business hours must map days to intervals, e.g. {"mon": [["09:00", "17:00"]]}')
    hours: dict[int, list[Interval]] = {}
    for name, intervals in business_hours.items():
        if name not in DAYS:
            raise CalendarError(f"unknown day {str(name)[:20]!r}; use {', '.join(DAYS)}")
        if not isinstance(intervals, Sequence) or isinstance(intervals, str) or len(intervals) > 24:
            raise CalendarError(f"{name}: give a list of at most 24 [opens, closes] pairs")
        hours[DAYS.index(name)] = _in_order(name, [_interval(name, pair) for pair in intervals])
    if not any(hours.values()):
        raise CalendarError("business hours must open at least once a week")
    return Calendar(zone, hours, frozenset(days))


def _interval(day: str, pair: object) -> Interval:
    if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
        raise CalendarError(f'{day}: each interval is a pair ["HH:MM", "HH:MM"]')
    opens, closes = _clock(day, pair[0]), _clock(day, pair[1])
    if opens is None or (closes is not None and closes <= opens):
        raise CalendarError(f"{day}: an interval must open before 24:00 and close after it opens")
    return opens, closes


def _in_order(day: str, intervals: list[Interval]) -> list[Interval]:
    """A day's intervals by opening time; `Calendar.add` walks them in that order and counts each minute once,
    so intervals that overlap are refused rather than counted twice."""
    ordered = sorted(intervals, key=lambda interval: interval[0])
    for (_, closes), (opens, _) in pairwise(ordered):
        if closes is None or opens < closes:
            raise CalendarError(f"{day}: intervals overlap; merge them into one")
    return ordered


def _clock(day: str, value: object) -> time | None:
    """A time of day; None for "24:00" (the end of the day)."""
    if value == "24:00":
        return None
    try:
        if isinstance(value, str) and len(value) == 5:
            return time.fromisoformat(value)
    except ValueError:
        pass
    raise CalendarError(f"{day}: {str(value)[:20]!r} is not a time of day HH:MM (00:00-24:00)")


def _holiday(value: object) -> date:
    if isinstance(value, date):
        return value
    try:
        if isinstance(value, str) and len(value) == 10:
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise CalendarError(f"holiday {str(value)[:20]!r} is not a date YYYY-MM-DD")
