"""Crontabs in words; anything unusual falls back to the raw fields, never to a wrong sentence."""

from __future__ import annotations

import pytest

from django_tasks_q.beat.describe import describe_crontab
from django_tasks_q.beat.schedules import Crontab


@pytest.mark.parametrize(("fields", "text"), [
    ({"minute": "30", "hour": "7", "day_of_week": "1", "timezone": "Asia/Shanghai"},
     "At 07:30 on Monday (Asia/Shanghai)"),
    ({}, "Every minute (UTC)"),
    ({"minute": "*/1"}, "Every minute (UTC)"),
    ({"minute": "0"}, "At minute 0 past every hour (UTC)"),
    ({"minute": "5", "hour": "*/2"}, "At minute 5 past every 2 hours (UTC)"),
    ({"minute": "*/15"}, "Every 15 minutes (UTC)"),
    ({"minute": "0", "hour": "0", "day_of_month": "1"}, "At 00:00 on day 1 of the month (UTC)"),
    ({"minute": "0", "hour": "9", "day_of_week": "mon-fri"}, "At 09:00 on Monday through Friday (UTC)"),
    ({"minute": "0", "hour": "9", "day_of_week": "1-5"}, "At 09:00 on Monday through Friday (UTC)"),
    ({"minute": "0", "hour": "9", "day_of_week": "MON-FRI"}, "At 09:00 on Monday through Friday (UTC)"),
    ({"minute": "0", "hour": "22", "day_of_week": "fri-mon"}, "At 22:00 on Friday through Monday (UTC)"),
    ({"minute": "0", "hour": "9", "day_of_week": "1,3,5"}, "At 09:00 on Monday, Wednesday and Friday (UTC)"),
    ({"minute": "0", "hour": "0", "day_of_week": "7"}, "At 00:00 on Sunday (UTC)"),
    ({"minute": "0", "hour": "0", "day_of_week": "sun"}, "At 00:00 on Sunday (UTC)"),
    ({"minute": "15", "hour": "9,17", "timezone": "Europe/London"}, "At 09:15 and 17:15 (Europe/London)"),
    ({"minute": "*/5", "day_of_week": "sat,sun"}, "Every 5 minutes on Saturday and Sunday (UTC)"),
])
def test_common_shapes_are_put_into_words(fields, text):
    assert Crontab(**fields).describe() == text


@pytest.mark.parametrize(("fields", "text"), [
    ({"minute": "5", "hour": "4", "month_of_year": "1-3", "day_of_week": "2,4", "timezone": "Europe/London"},
     "cron 5 4 * 1-3 2,4 (Europe/London)"),
    ({"minute": "0", "hour": "0", "day_of_month": "13", "day_of_week": "5"}, "cron 0 0 13 * 5 (UTC)"),
    ({"minute": "0", "hour": "0", "day_of_week": "*/2"}, "cron 0 0 * * */2 (UTC)"),
    ({"minute": "0-10", "hour": "3"}, "cron 0-10 3 * * * (UTC)"),
    ({"minute": "*", "hour": "3"}, "cron * 3 * * * (UTC)"),
    ({"minute": "0", "hour": "9-17"}, "cron 0 9-17 * * * (UTC)"),
    ({"minute": "0", "hour": "0", "day_of_month": "1,15"}, "cron 0 0 1,15 * * (UTC)"),
    ({"minute": "0", "hour": "0", "day_of_week": "1-5/2"}, "cron 0 0 * * 1-5/2 (UTC)"),
])
def test_unusual_shapes_fall_back_to_the_raw_fields_in_cron_order(fields, text):
    assert Crontab(**fields).describe() == text


def test_describe_crontab_works_on_plain_strings():
    assert describe_crontab(" 30 ", "7", "*", "*", "*", "UTC") == "At 07:30 (UTC)"
