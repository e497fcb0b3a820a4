"""FHIR date/dateTime/instant values placed on the site's calendar.

Intervals are whole days between calendar dates in the site time zone (PATHWAY.md), so
every timestamp is converted to that zone first: `23:40-05:00` is the next day in UTC.
A value without an offset is site-local; a date-only value is that date. Partial dates
(`2023`, `2023-04`) keep their precision and are never placed on a day.

A value that does sit on a day is an `OnDay`, so a rule that needs the day takes an
`OnDay` and the type checker, not an assert, sees that it has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

Precision = Literal["year", "month", "day", "time"]

_FHIR_DATETIME = re.compile(  # re.ASCII: only 0-9 are digits in FHIR dates
    r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,
)


class UnparseableTime(ValueError):
    """The text is not a FHIR date, dateTime or instant (or names an impossible date)."""


@dataclass(frozen=True)
class When:
    """A point in time as FHIR gave it, placed in the site time zone."""

    raw: str
    precision: Precision
    day: date | None = None          # calendar date in the site zone; None when partial
    instant: datetime | None = None  # aware, in the site zone; only with a time of day

    @property
    def is_day_precise(self) -> bool:
        return self.day is not None

    def sort_key(self) -> tuple[date, int, datetime | None]:
        """Order on the site calendar; a date-only value sorts before timestamps that day."""
        if self.day is None:
            raise ValueError(f"partial date {self.raw!r} has no place on the calendar")
        if self.instant is None:
            return (self.day, 0, None)
        return (self.day, 1, self.instant)

    def iso(self) -> str:
        """Instant with offset when there is a time of day, else the calendar date."""
        if self.instant is not None:
            return self.instant.isoformat()
        if self.day is not None:
            return self.day.isoformat()
        return self.raw

    def __post_init__(self) -> None:
        if self.day is not None and not isinstance(self, OnDay):
            raise TypeError("a When with a calendar day is an OnDay")


@dataclass(frozen=True)
class OnDay(When):
    """A point in time that sits on a calendar day in the site zone (precision day or
    time): the only kind a pathway rule places on the timeline."""

    day: date


def parse_when(raw: str, tz: tzinfo) -> When:
    text = raw.strip()
    m = _FHIR_DATETIME.match(text)
    if not m:
        raise UnparseableTime(f"not a FHIR date/dateTime: {raw!r}")
    year = int(m["year"])
    if m["month"] is None:
        return When(raw, "year")
    month = int(m["month"])
    if not 1 <= month <= 12:
        raise UnparseableTime(f"month out of range in {raw!r}")
    if m["day"] is None:
        return When(raw, "month")
    try:
        day = date(year, month, int(m["day"]))
    except ValueError:
        raise UnparseableTime(f"impossible date {raw!r}") from None
    if m["hour"] is None:
        return OnDay(raw, "day", day=day)
    try:
        second = int(m["second"] or 0)
        micro = int(round(float(m["fraction"]) * 1_000_000)) if m["fraction"] else 0
        local = datetime(year, month, day.day, int(m["hour"]), int(m["minute"]),
                         min(second, 59), min(micro, 999_999))
    except ValueError:
        raise UnparseableTime(f"impossible time in {raw!r}") from None
    offset = m["tz"]
    try:
        if offset is None:
            placed = local.replace(tzinfo=tz)
        else:
            placed = local.replace(tzinfo=_offset(offset, raw)).astimezone(tz)
        day = placed.date()
    except OverflowError:  # year 1 or 9999 moved across the calendar's edge
        raise UnparseableTime(f"{raw!r} is outside the calendar once placed in the site zone") \
            from None
    return OnDay(raw, "time", day=day, instant=placed)


def _offset(text: str, raw: str) -> tzinfo:
    from datetime import timezone

    if text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:  # real offsets run from -12:00 to +14:00
        raise UnparseableTime(f"time zone offset out of range in {raw!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def day_bounds(when: When) -> tuple[date, date]:
    """Earliest and latest calendar day a value can stand for: one day when it has one; the
    whole month or year of a partial date (FHIR R4 "date": precision is kept, not filled)."""
    if when.day is not None:
        return when.day, when.day
    year = int(when.raw.strip()[:4])
    if when.precision == "year":
        return date(year, 1, 1), date(year, 12, 31)
    month = int(when.raw.strip()[5:7])
    first = date(year, month, 1)
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return first, following - timedelta(days=1)


def days_between(start: OnDay, end: OnDay) -> int:
    """Whole calendar days from `start` to `end` on the site calendar."""
    return (end.day - start.day).days


def hours_apart(a: When, b: When) -> float | None:
    """Absolute gap in hours when both have a time of day, else None."""
    if a.instant is None or b.instant is None:
        return None
    return abs((a.instant - b.instant).total_seconds()) / 3600.0


def not_after(a: OnDay, b: OnDay) -> bool:
    """`a` is on or before `b`: by instant when both have one, else by calendar date."""
    if a.instant is not None and b.instant is not None:
        return a.instant <= b.instant
    return a.day <= b.day
