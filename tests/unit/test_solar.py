"""Solar events against an independent ephemeris, polar days and nights, and the Solar schedule.

Expected instants come from PyEphem 4.2.1 (libastro, a full ephemeris sharing
no code with ours) using NOAA's convention: the sun's centre 0°50' below the
horizon for sunrise and sunset (34' refraction + 16' semi-diameter), 6° for
civil twilight, no further refraction model (``pressure=0``). In local time
they are the published times, e.g. London 04:43 / 21:21 BST at the 2024
summer solstice and Sydney 07:00 / 16:54 AEST at its winter solstice.
The tolerance is the one minute NOAA states for these formulas.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from django_tasks_q.beat.schedules import InvalidSchedule, Solar
from django_tasks_q.beat.solar import EVENTS, event_time

LONDON = (51.5074, -0.1278)
NEW_YORK = (40.7128, -74.0060)
SYDNEY = (-33.8688, 151.2093)
TROMSO = (69.6492, 18.9553)
ONE_MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("event", "place", "day", "expected"), [
    ("sunrise", LONDON, date(2024, 6, 21), utc(2024, 6, 21, 3, 43, 12)),
    ("sunset", LONDON, date(2024, 6, 21), utc(2024, 6, 21, 20, 21, 38)),
    ("solar_noon", LONDON, date(2024, 6, 21), utc(2024, 6, 21, 12, 2, 25)),
    ("dawn_civil", LONDON, date(2024, 6, 21), utc(2024, 6, 21, 2, 55, 25)),
    ("dusk_civil", LONDON, date(2024, 6, 21), utc(2024, 6, 21, 21, 9, 24)),
    ("sunrise", LONDON, date(2024, 12, 21), utc(2024, 12, 21, 8, 3, 59)),
    ("sunset", LONDON, date(2024, 12, 21), utc(2024, 12, 21, 15, 53, 36)),
    ("sunrise", NEW_YORK, date(2024, 3, 20), utc(2024, 3, 20, 10, 58, 30)),
    ("sunset", NEW_YORK, date(2024, 3, 20), utc(2024, 3, 20, 23, 8, 42)),
    ("solar_noon", NEW_YORK, date(2024, 3, 20), utc(2024, 3, 20, 17, 3, 16)),
    # Sydney's 21 June sunrise is still 20 June in UTC
    ("sunrise", SYDNEY, date(2024, 6, 21), utc(2024, 6, 20, 21, 0, 4)),
    ("sunset", SYDNEY, date(2024, 6, 21), utc(2024, 6, 21, 6, 53, 55)),
    ("dawn_civil", SYDNEY, date(2024, 6, 21), utc(2024, 6, 20, 20, 32, 20)),
])
def test_event_time_matches_an_independent_ephemeris_within_a_minute(event, place, day, expected):
    result = event_time(event, day, *place)
    assert result.tzinfo is UTC
    assert abs(result - expected) < ONE_MINUTE, result


def test_deeper_twilights_come_in_order_around_noon():
    times = [event_time(event, date(2024, 3, 20), *LONDON) for event in EVENTS]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_midnight_sun_has_no_sunrise_or_sunset_but_a_noon():
    day = date(2024, 6, 21)
    assert event_time("sunrise", day, *TROMSO) is None
    assert event_time("sunset", day, *TROMSO) is None
    assert event_time("dusk_civil", day, *TROMSO) is None
    assert abs(event_time("solar_noon", day, *TROMSO) - utc(2024, 6, 21, 10, 46, 5)) < ONE_MINUTE


def test_polar_night_has_no_sunrise():
    assert event_time("sunrise", date(2024, 12, 21), *TROMSO) is None
    assert event_time("dawn_civil", date(2024, 12, 21), *TROMSO) is not None  # twilight still comes


def test_event_time_rejects_unknown_events():
    with pytest.raises(ValueError, match="moonrise"):
        event_time("moonrise", date(2024, 1, 1), *LONDON)


# -- the Solar schedule -------------------------------------------------------

def test_next_after_skips_the_midnight_sun():
    sunset = Solar("sunset", *TROMSO)
    assert event_time("sunset", date(2024, 7, 24), *TROMSO) is None  # the last day without one
    result = sunset.next_after(utc(2024, 6, 21, 12))
    assert abs(result - utc(2024, 7, 25, 22, 23, 8)) < ONE_MINUTE  # PyEphem
    assert abs(sunset.last_at_or_before(utc(2024, 6, 21, 12)) - utc(2024, 5, 16, 22, 12, 11)) < ONE_MINUTE


def test_next_after_skips_the_polar_night():
    sunrise = Solar("sunrise", *TROMSO)
    assert sunrise.next_after(utc(2024, 12, 21)).date() == date(2025, 1, 15)
    assert sunrise.last_at_or_before(utc(2024, 12, 21)).date() == date(2024, 11, 26)


def test_next_after_is_strictly_after_and_last_at_or_before_includes_the_moment():
    sunrise = Solar("sunrise", *SYDNEY)
    first = sunrise.next_after(utc(2024, 6, 20, 12))
    assert abs(first - utc(2024, 6, 20, 21, 0, 4)) < ONE_MINUTE
    second = sunrise.next_after(first)
    assert timedelta(hours=23, minutes=59) < second - first < timedelta(hours=24, minutes=1)
    assert sunrise.last_at_or_before(first) == first
    assert sunrise.last_at_or_before(first - timedelta(seconds=1)) < first - timedelta(hours=23)


@pytest.mark.parametrize(("event", "place", "count"), [
    ("sunrise", LONDON, 366), ("sunset", SYDNEY, 366), ("dusk_nautical", NEW_YORK, 366),
    ("solar_noon", (0.0, 179.9), 366), ("dusk_civil", LONDON, 366),
    ("sunset", TROMSO, 248),  # no sunset in the midnight sun nor in the polar night (PyEphem: 248)
])
def test_a_year_of_events_is_strictly_increasing_about_a_day_apart(event, place, count):
    schedule = Solar(event, *place)
    moment, runs = utc(2024, 1, 1), []
    while (moment := schedule.next_after(moment)) < utc(2025, 1, 1):
        runs.append(moment)
        assert schedule.last_at_or_before(moment) == moment
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert all(gap > timedelta(hours=23) for gap in gaps)
    assert len(runs) == count


def test_moments_in_any_zone_and_results_in_utc():
    moment = datetime(2024, 6, 21, 0, 0, tzinfo=ZoneInfo("Europe/London"))  # 20 June 23:00 UTC
    result = Solar("sunrise", *LONDON).next_after(moment)
    assert result.tzinfo is UTC and abs(result - utc(2024, 6, 21, 3, 43, 12)) < ONE_MINUTE


@pytest.mark.parametrize(("event", "latitude", "longitude", "field"), [
    ("moonrise", 0, 0, "event"), ("Sunrise", 0, 0, "event"),
    ("sunrise", 90.5, 0, "latitude"), ("sunrise", -91, 0, "latitude"), ("sunrise", "north", 0, "latitude"),
    ("sunrise", float("nan"), 0, "latitude"), ("sunrise", True, 0, "latitude"),
    ("sunrise", 0, 180.01, "longitude"), ("sunrise", 0, -181, "longitude"), ("sunrise", 0, None, "longitude"),
])
def test_solar_rejects_bad_fields_naming_them(event, latitude, longitude, field):
    with pytest.raises(InvalidSchedule) as excinfo:
        Solar(event, latitude, longitude)
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")


def test_decimal_coordinates_from_a_decimal_field_are_stored_as_floats():
    solar = Solar("sunrise", Decimal("51.5074"), Decimal("-0.1278"))
    assert solar == Solar("sunrise", 51.5074, -0.1278)
    assert isinstance(solar.latitude, float)


@pytest.mark.parametrize(("event", "text"), [
    ("sunrise", "at sunrise (51.5074, -0.1278)"),
    ("solar_noon", "at solar noon (51.5074, -0.1278)"),
    ("dusk_civil", "at civil dusk (51.5074, -0.1278)"),
    ("dawn_astronomical", "at astronomical dawn (51.5074, -0.1278)"),
])
def test_solar_describe(event, text):
    assert Solar(event, *LONDON).describe() == text
