from datetime import date
from zoneinfo import ZoneInfo

import pytest

from fhir_spine.pathway.time import (
    OnDay,
    UnparseableTime,
    When,
    days_between,
    hours_apart,
    parse_when,
)

UTC = ZoneInfo("UTC")


def test_offset_crossing_midnight_lands_on_next_utc_day():
    w = parse_when("2023-03-14T23:40:00-05:00", UTC)
    assert w.day == date(2023, 3, 15)
    assert w.precision == "time"


def test_same_instant_in_a_western_site_zone_keeps_the_local_day():
    w = parse_when("2023-03-14T23:40:00-05:00", ZoneInfo("America/Chicago"))
    assert w.day == date(2023, 3, 14)


def test_timestamp_without_offset_is_site_local():
    w = parse_when("2023-03-14T23:40:00", ZoneInfo("Europe/Moscow"))
    assert w.day == date(2023, 3, 14)
    assert w.instant is not None and w.instant.utcoffset().total_seconds() == 3 * 3600


@pytest.mark.parametrize("raw,precision", [("2023", "year"), ("2023-04", "month")])
def test_partial_dates_are_not_placed_on_a_day(raw, precision):
    w = parse_when(raw, UTC)
    assert w.precision == precision and w.day is None and not w.is_day_precise


@pytest.mark.parametrize("raw", ["2023-02-30", "2023-13-01", "yesterday", "2023-04-05T25:00:00Z"])
def test_unparseable_dates_raise(raw):
    with pytest.raises(UnparseableTime):
        parse_when(raw, UTC)


def test_days_between_uses_calendar_days_not_24h_blocks():
    a = parse_when("2023-03-01T23:00:00Z", UTC)
    b = parse_when("2023-03-02T01:00:00Z", UTC)
    assert days_between(a, b) == 1
    assert hours_apart(a, b) == 2


def test_date_only_sorts_before_timestamps_that_day():
    d = parse_when("2023-03-01", UTC)
    t = parse_when("2023-03-01T00:00:01Z", UTC)
    assert d.sort_key() < t.sort_key()
    assert hours_apart(d, t) is None


@pytest.mark.parametrize("raw,on_day", [
    ("2023", False), ("2023-04", False), ("2023-04-05", True), ("2023-04-05T10:00:00Z", True),
])
def test_a_value_on_a_calendar_day_is_an_on_day(raw, on_day):
    """The type says what `is_day_precise` says: rules that need a day take an OnDay."""
    w = parse_when(raw, UTC)
    assert isinstance(w, OnDay) == on_day == w.is_day_precise


def test_a_when_with_a_day_must_be_an_on_day():
    with pytest.raises(TypeError):
        When("2023-04-05", "day", day=date(2023, 4, 5))
