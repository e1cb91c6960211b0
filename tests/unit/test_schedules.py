"""Schedules are pure: fixed moments in, aware UTC instants out, DST handled by one stated rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from django_tasks_q.beat.schedules import Clocked, Crontab, Interval, InvalidSchedule
from django_tasks_q.exceptions import TasksQError

LONDON, NEW_YORK, SHANGHAI = ZoneInfo("Europe/London"), ZoneInfo("America/New_York"), ZoneInfo("Asia/Shanghai")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def runs_on_local_day(schedule: Crontab, day: date) -> list[datetime]:
    """Every run whose wall-clock date in the crontab's zone is ``day``."""
    zone = ZoneInfo(schedule.timezone)
    moment = datetime.combine(day, datetime.min.time(), zone) - timedelta(hours=6)
    runs = []
    while True:
        moment = schedule.next_after(moment)
        local = moment.astimezone(zone).date()
        if local > day:
            return runs
        if local == day:
            runs.append(moment)


# -- Interval -----------------------------------------------------------------

def test_interval_next_after_counts_from_the_last_run_and_returns_utc():
    assert Interval(30, "seconds").next_after(utc(2024, 1, 1, 12)) == utc(2024, 1, 1, 12, 0, 30)
    tokyo = datetime(2024, 1, 1, 21, tzinfo=ZoneInfo("Asia/Tokyo"))  # 12:00 UTC
    result = Interval(2, "hours").next_after(tokyo)
    assert result == utc(2024, 1, 1, 14) and result.tzinfo is UTC


def test_interval_of_days_is_elapsed_time_even_across_dst():
    before = datetime(2024, 3, 30, 12, tzinfo=LONDON)  # GMT; the next day is 23 hours long
    assert Interval(1, "days").next_after(before) == utc(2024, 3, 31, 12)  # 13:00 BST


def test_interval_last_at_or_before_is_the_moment_itself():
    moment = datetime(2024, 5, 5, 9, 15, tzinfo=NEW_YORK)
    assert Interval(5, "minutes").last_at_or_before(moment) == utc(2024, 5, 5, 13, 15)


@pytest.mark.parametrize(("every", "period", "text", "seconds"), [
    (30, "seconds", "every 30 seconds", 30),
    (1, "seconds", "every second", 1),
    (1, "minutes", "every minute", 60),
    (2, "hours", "every 2 hours", 7200),
    (1, "days", "every day", 86400),
    (3, "days", "every 3 days", 259200),
])
def test_interval_describe_and_seconds(every, period, text, seconds):
    assert Interval(every, period).describe() == text
    assert Interval(every, period).seconds == seconds


@pytest.mark.parametrize(("every", "period", "field"), [
    (0, "seconds", "every"), (-5, "minutes", "every"), (True, "seconds", "every"), ("5", "seconds", "every"),
    (5, "weeks", "period"), (5, "second", "period"),
])
def test_interval_rejects_bad_fields_naming_them(every, period, field):
    with pytest.raises(InvalidSchedule) as excinfo:
        Interval(every, period)
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")


def test_naive_moments_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        Interval(1, "minutes").next_after(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        Crontab().next_after(datetime(2024, 1, 1))


# -- Crontab validation -------------------------------------------------------

@pytest.mark.parametrize(("fields", "field", "shown"), [
    ({"minute": "61"}, "minute", "'61' is out of range 0-59"),
    ({"hour": "24"}, "hour", "'24' is out of range 0-23"),
    ({"day_of_week": "8"}, "day_of_week", "'8' is out of range 0-6"),
    ({"day_of_week": "funday"}, "day_of_week", "'funday'"),
    ({"month_of_year": "13"}, "month_of_year", "'13' is out of range 1-12"),
    ({"day_of_month": "0"}, "day_of_month", "'0' is out of range 1-31"),
    ({"timezone": "Mars/Base"}, "timezone", "'Mars/Base'"),
    ({"timezone": "localtime"}, "timezone", "'localtime'"),
    ({"minute": "*/0"}, "minute", "'*/0'"),
    ({"minute": "1 2"}, "minute", "'1 2'"),  # would shift every later field
    ({"minute": ""}, "minute", "''"),
    ({"minute": "H"}, "minute", "'H'"),  # croniter's extensions are refused
    ({"day_of_month": "L"}, "day_of_month", "'L'"),
    ({"day_of_week": "1#2"}, "day_of_week", "'1#2'"),
    ({"hour": 7}, "hour", "7"),
    ({"day_of_month": "31", "month_of_year": "4,6"}, "day_of_month", "'31' never falls in month_of_year '4,6'"),
    ({"day_of_month": "30", "month_of_year": "feb", "day_of_week": "mon"}, "day_of_month", "'30'"),  # AND, not OR
])
def test_crontab_rejects_each_bad_field_naming_it(fields, field, shown):
    with pytest.raises(InvalidSchedule) as excinfo:
        Crontab(**fields)
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")
    assert shown in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value, TasksQError)


@pytest.mark.parametrize("fields", [
    {"minute": "*/15"}, {"minute": "0,30"}, {"hour": "9-17"}, {"day_of_week": "1-5"},
    {"day_of_week": "mon-fri"}, {"day_of_week": "MON-FRI"}, {"day_of_week": "fri-mon"}, {"day_of_week": "7"},
    {"month_of_year": "jan-mar"}, {"day_of_month": "1-31/2"}, {"timezone": "Australia/Lord_Howe"},
])
def test_crontab_accepts_the_usual_cron_forms(fields):
    Crontab(**fields)  # does not raise


def test_crontab_equality_ignores_its_derived_expression():
    assert Crontab(minute="0") == Crontab(minute="0")
    assert hash(Crontab(minute="0")) == hash(Crontab(minute="0"))
    assert "_expression" not in repr(Crontab())


@pytest.mark.parametrize(("day_of_week", "expected"), [
    ("7", utc(2024, 1, 7)), ("0", utc(2024, 1, 7)), ("sun", utc(2024, 1, 7)), ("7-7", utc(2024, 1, 7)),
    ("mon-fri", utc(2024, 1, 2)), ("sat", utc(2024, 1, 6)), ("fri-mon", utc(2024, 1, 5)),
])
def test_day_of_week_zero_and_seven_are_sunday(day_of_week, expected):
    # 2024-01-01 is a Monday
    assert Crontab(minute="0", hour="0", day_of_week=day_of_week).next_after(utc(2024, 1, 1)) == expected


def test_day_of_month_and_day_of_week_combine_with_and_like_celery():
    friday_13th = Crontab(minute="0", hour="0", day_of_month="13", day_of_week="fri")
    assert friday_13th.next_runs(utc(2024, 1, 1), 3) == [utc(2024, 9, 13), utc(2024, 12, 13), utc(2025, 6, 13)]


# -- Crontab: plain arithmetic ------------------------------------------------

def test_next_after_is_strictly_after_and_last_at_or_before_includes_the_moment():
    daily = Crontab(minute="30", hour="7")
    assert daily.next_after(utc(2024, 5, 1, 7, 30)) == utc(2024, 5, 2, 7, 30)
    assert daily.next_after(utc(2024, 5, 1, 7, 29, 59, 999999)) == utc(2024, 5, 1, 7, 30)
    assert daily.last_at_or_before(utc(2024, 5, 1, 7, 30)) == utc(2024, 5, 1, 7, 30)
    assert daily.last_at_or_before(utc(2024, 5, 1, 7, 29, 59)) == utc(2024, 4, 30, 7, 30)


def test_moments_in_any_zone_give_utc_results():
    moment = datetime(2024, 5, 1, 16, 30, tzinfo=ZoneInfo("Asia/Tokyo"))  # 07:30 UTC
    result = Crontab(minute="30", hour="7").next_after(moment)
    assert result == utc(2024, 5, 2, 7, 30) and result.tzinfo is UTC


def test_asia_shanghai_monday_0730_is_sunday_2330_utc():
    monday = Crontab(minute="30", hour="7", day_of_week="1", timezone="Asia/Shanghai")
    runs = monday.next_runs(utc(2024, 1, 1), 5)  # Monday 08:00 in Shanghai: this week's run has passed
    assert runs == [utc(2024, 1, 7, 23, 30) + timedelta(weeks=n) for n in range(5)]
    assert all(r.astimezone(SHANGHAI).strftime("%a %H:%M") == "Mon 07:30" for r in runs)


def test_leap_day_crontab_waits_for_the_next_leap_year():
    leap = Crontab(minute="0", hour="0", day_of_month="29", month_of_year="2")
    assert leap.next_after(utc(2026, 3, 1)) == utc(2028, 2, 29)
    assert leap.last_at_or_before(utc(2026, 3, 1)) == utc(2024, 2, 29)


def test_day_31_skips_months_without_one():
    month_end = Crontab(minute="0", hour="0", day_of_month="31")
    assert month_end.next_runs(utc(2024, 1, 1), 5) == [
        utc(2024, 1, 31), utc(2024, 3, 31), utc(2024, 5, 31), utc(2024, 7, 31), utc(2024, 8, 31)]


def test_next_runs_returns_count_strictly_increasing_utc_instants():
    runs = Crontab(minute="*/15").next_runs(utc(2024, 1, 1, 0, 7))
    assert runs == [utc(2024, 1, 1, 0, 15), utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 0, 45),
                    utc(2024, 1, 1, 1, 0), utc(2024, 1, 1, 1, 15)]
    assert Crontab().next_runs(utc(2024, 1, 1), 2) == [utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 2)]


# -- Crontab across DST -------------------------------------------------------
# 2024 transitions: London 31 Mar 01:00 UTC (GMT->BST), 27 Oct 01:00 UTC (BST->GMT);
# New York 10 Mar 07:00 UTC (EST->EDT), 3 Nov 06:00 UTC (EDT->EST).

def test_nonexistent_time_runs_once_at_the_jump_london():
    at_0130 = Crontab(minute="30", hour="1", timezone="Europe/London")  # 01:00-02:00 is skipped on 31 Mar
    assert at_0130.next_runs(utc(2024, 3, 29, 12), 3) == [
        utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30)]
    assert at_0130.last_at_or_before(utc(2024, 3, 31, 1, 0)) == utc(2024, 3, 31, 1, 0)
    assert at_0130.last_at_or_before(utc(2024, 3, 31, 0, 59, 59)) == utc(2024, 3, 30, 1, 30)
    # 02:30 does exist in London that day (it is BST): nothing special happens
    at_0230 = Crontab(minute="30", hour="2", timezone="Europe/London")
    assert at_0230.next_after(utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 1, 30)


def test_nonexistent_time_runs_once_at_the_jump_new_york():
    at_0230 = Crontab(minute="30", hour="2", timezone="America/New_York")
    assert at_0230.next_runs(utc(2024, 3, 9), 3) == [
        utc(2024, 3, 9, 7, 30), utc(2024, 3, 10, 7, 0), utc(2024, 3, 11, 6, 30)]  # 07:00 UTC = 03:00 EDT


def test_hourly_on_the_spring_forward_day_runs_once_per_wall_label():
    london = runs_on_local_day(Crontab(minute="0", timezone="Europe/London"), date(2024, 3, 31))
    assert london == [utc(2024, 3, 31, hour) for hour in range(23)]  # labels 01:00 and 02:00 share 01:00 UTC
    new_york = runs_on_local_day(Crontab(minute="0", timezone="America/New_York"), date(2024, 3, 10))
    assert new_york == [utc(2024, 3, 10, 5) + timedelta(hours=n) for n in range(23)]


def test_hourly_on_the_fall_back_day_skips_the_repeated_hour():
    london = runs_on_local_day(Crontab(minute="0", timezone="Europe/London"), date(2024, 10, 27))
    assert london == [utc(2024, 10, 26, 23), utc(2024, 10, 27, 0)] + [utc(2024, 10, 27, h) for h in range(2, 24)]
    new_york = runs_on_local_day(Crontab(minute="0", timezone="America/New_York"), date(2024, 11, 3))
    assert new_york == [utc(2024, 11, 3, 4), utc(2024, 11, 3, 5)] + [
        utc(2024, 11, 3, 7) + timedelta(hours=n) for n in range(22)]
    for runs, zone in ((london, LONDON), (new_york, NEW_YORK)):
        labels = [r.astimezone(zone).strftime("%H:%M") for r in runs]
        assert labels == [f"{h:02d}:00" for h in range(24)]


def test_every_30_minutes_never_repeats_a_wall_label():
    every_30 = Crontab(minute="*/30", timezone="Europe/London")
    spring = runs_on_local_day(every_30, date(2024, 3, 31))
    fall = runs_on_local_day(every_30, date(2024, 10, 27))
    assert len(spring) == 46  # 00:00, 00:30, then 02:00 BST (= 01:00, 01:30, 02:00 merged) .. 23:30
    assert len(fall) == 48
    for runs in (spring, fall):
        labels = [r.astimezone(LONDON).strftime("%H:%M") for r in runs]
        assert len(set(labels)) == len(labels)
        assert all(b > a for a, b in zip(runs, runs[1:]))


def test_repeated_time_runs_once_at_its_first_occurrence():
    at_0130 = Crontab(minute="30", hour="1", timezone="Europe/London")
    assert at_0130.next_runs(utc(2024, 10, 26, 12), 2) == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
    second_pass = utc(2024, 10, 27, 1, 15)  # 01:15 GMT, after the first 01:30 (BST) ran
    assert at_0130.next_after(second_pass) == utc(2024, 10, 28, 1, 30)
    assert at_0130.last_at_or_before(utc(2024, 10, 27, 1, 45)) == utc(2024, 10, 27, 0, 30)


@pytest.mark.parametrize(("zone", "year", "expected"), [
    ("Europe/London", 2025, 365), ("Europe/London", 2024, 366), ("America/New_York", 2025, 365),
    ("Asia/Shanghai", 2025, 365), ("Australia/Lord_Howe", 2025, 365),  # Lord Howe shifts by 30 minutes
])
def test_daily_0730_runs_exactly_once_every_local_day_of_the_year(zone, year, expected):
    daily = Crontab(minute="30", hour="7", timezone=zone)
    runs, moment = [], datetime(year, 1, 1, tzinfo=ZoneInfo(zone)) - timedelta(microseconds=1)
    while (moment := daily.next_after(moment)).astimezone(ZoneInfo(zone)).year == year:
        runs.append(moment)
    local = [r.astimezone(ZoneInfo(zone)) for r in runs]
    assert len(runs) == expected
    assert len({r.date() for r in local}) == expected
    assert {r.strftime("%H:%M") for r in local} == {"07:30"}


def test_daily_in_the_gap_runs_every_day_of_the_year_new_york():
    daily = Crontab(minute="30", hour="2", timezone="America/New_York")
    runs = daily.next_runs(datetime(2024, 12, 31, 12, tzinfo=NEW_YORK), 365)
    local = [r.astimezone(NEW_YORK) for r in runs]
    assert [r.date() for r in local] == [date(2025, 1, 1) + timedelta(days=n) for n in range(365)]
    odd = {r.date(): r.strftime("%H:%M") for r in local if r.strftime("%H:%M") != "02:30"}
    assert odd == {date(2025, 3, 9): "03:00"}


TRANSITIONS = {  # 2024, in UTC
    "Europe/London": [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1)],
    "America/New_York": [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6)],
    "Australia/Lord_Howe": [utc(2024, 4, 6, 15), utc(2024, 10, 5, 15, 30)],  # half-hour shifts
    "Asia/Shanghai": [utc(2024, 3, 31, 1)],  # none: a control
}


@pytest.mark.parametrize("crontab", [
    Crontab(minute="0", timezone="Europe/London"),
    Crontab(minute="*/30", timezone="Europe/London"),
    Crontab(minute="30", hour="1", timezone="Europe/London"),
    Crontab(minute="*/20", hour="1-3", timezone="America/New_York"),
    Crontab(minute="0", hour="2", timezone="Australia/Lord_Howe"),
    Crontab(minute="15", timezone="Asia/Shanghai"),
])
def test_slot_invariants_hold_around_every_transition(crontab):
    for transition in TRANSITIONS[crontab.timezone]:
        for step in range(-3 * 60, 3 * 60, 7):
            x = transition + timedelta(minutes=step, seconds=step % 60)
            after, last = crontab.next_after(x), crontab.last_at_or_before(x)
            assert after > x >= last
            assert crontab.next_after(last) == after
            assert after.tzinfo is UTC and last.tzinfo is UTC


# -- Clocked ------------------------------------------------------------------

def test_clocked_runs_once():
    once = Clocked(at=datetime(2026, 11, 27, 13, tzinfo=ZoneInfo("Europe/Paris")))  # 12:00 UTC
    assert once.next_after(utc(2026, 11, 27, 11, 59)) == utc(2026, 11, 27, 12)
    assert once.next_after(utc(2026, 11, 27, 11, 59)).tzinfo is UTC
    assert once.next_after(utc(2026, 11, 27, 12)) is None
    assert once.next_after(utc(2027, 1, 1)) is None
    assert once.last_at_or_before(utc(2026, 11, 27, 11, 59)) is None
    assert once.last_at_or_before(utc(2026, 11, 27, 12)) == utc(2026, 11, 27, 12)


def test_clocked_describe_shows_the_time_in_its_own_zone():
    assert Clocked(at=utc(2026, 11, 27, 12)).describe() == "once at 2026-11-27 12:00 (UTC)"
    paris = Clocked(at=datetime(2026, 11, 27, 13, 0, 5, tzinfo=ZoneInfo("Europe/Paris")))
    assert paris.describe() == "once at 2026-11-27 13:00:05 (Europe/Paris)"


def test_clocked_requires_an_aware_datetime():
    with pytest.raises(InvalidSchedule) as excinfo:
        Clocked(at=datetime(2026, 11, 27, 12))
    assert excinfo.value.field == "at"
