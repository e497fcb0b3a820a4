"""Site-local moments and how they are written as FHIR date/dateTime/instant strings.

The plan lives in site-local wall-clock time; only here does a time zone enter, when a
moment is rendered. The midnight-crossing variant picks a fixed offset under which the
written date differs from the site-local date, so a reader that drops the offset (or
takes the UTC date when the site is not UTC) gets the day wrong.
"""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from fhir_spine.synth.model import When

_MAX_OFFSET = timedelta(hours=14)
_MIN_OFFSET = timedelta(hours=-13, minutes=-59)  # FHIR's dateTime regex allows -13:59


def at(day: date, hour: int, minute: int = 0) -> When:
    return When(datetime.combine(day, time(hour, minute)))


def on(day: date) -> When:
    """A date-only value."""
    return When(datetime.combine(day, time(0, 0)), precision="day")


def month_of(day: date) -> When:
    """A partial date (`YYYY-MM`) that cannot be placed on a day."""
    return When(datetime.combine(day.replace(day=1), time(0, 0)), precision="month")


def between(rng: random.Random, day: date, first_hour: int, last_hour: int) -> When:
    """A time on `day` between the two hours, in five-minute steps."""
    minutes = rng.randrange(first_hour * 60, last_hour * 60 + 1, 5)
    return at(day, minutes // 60, minutes % 60)


def crossing_moment(day: date, zone: ZoneInfo) -> When:
    """A moment on site-local `day` whose rendered timestamp shows a different date.

    Preferably 04:40 site time written five hours behind the site (23:40 of the previous
    day, as in `...T23:40:00-05:00` for a UTC site); where that offset would fall outside
    what FHIR allows, 21:40 written three hours ahead (00:40 of the next day).
    """
    early = datetime.combine(day, time(4, 40))
    offset = _site_offset(early, zone) - timedelta(hours=5)
    if offset >= _MIN_OFFSET:
        return When(early, render_offset=offset)
    late = datetime.combine(day, time(21, 40))
    offset = _site_offset(late, zone) + timedelta(hours=3)
    if offset > _MAX_OFFSET:  # no IANA zone is this far out, but fail loudly if one were
        raise ValueError(f"cannot write a midnight-crossing time for zone {zone.key}")
    return When(late, render_offset=offset)


def _site_offset(local: datetime, zone: ZoneInfo) -> timedelta:
    return local.replace(tzinfo=zone).utcoffset() or timedelta(0)


def render(when: When, zone: ZoneInfo) -> str:
    """FHIR dateTime text: `YYYY-MM`, `YYYY-MM-DD`, or a timestamp with its offset."""
    if when.precision == "month":
        return when.local.strftime("%Y-%m")
    if when.precision == "day":
        return when.local.date().isoformat()
    return _aware(when, zone).isoformat(timespec="seconds")


def render_instant(when: When, zone: ZoneInfo) -> str:
    """FHIR instant: always a full timestamp (used for `issued`)."""
    return _aware(when, zone).isoformat(timespec="seconds")


def _aware(when: When, zone: ZoneInfo) -> datetime:
    site = when.local.replace(tzinfo=zone)
    if when.render_offset is None:
        return site
    return site.astimezone(timezone(when.render_offset))
