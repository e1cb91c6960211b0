"""The periodic task admin through the Django test client: the form, the list, the actions."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from tests.conftest import take

ADD = reverse("admin:django_tasks_q_periodictask_add")
CHANGELIST = reverse("admin:django_tasks_q_periodictask_changelist")


def change_url(task: PeriodicTask) -> str:
    return reverse("admin:django_tasks_q_periodictask_change", args=[task.pk])


def form_data(**overrides) -> dict:
    """A complete add/change POST: an interval task, every field the form has."""
    data = {
        "name": "nightly add", "task": "testproject.videos.tasks.add", "enabled": "on", "description": "",
        "schedule_kind": "interval", "every": "30", "period": "seconds",
        "minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
        "timezone": "UTC", "clocked_time_0": "", "clocked_time_1": "", "event": "", "latitude": "",
        "longitude": "",
        "args": "[1, 2]", "kwargs": "{}", "queue": "", "routing_key": "", "priority": "", "expire_seconds": "",
        "start_time_0": "", "start_time_1": "", "expires_0": "", "expires_1": "", "catch_up": "once",
    }
    data.update(overrides)
    return data


def errors_of(response, field: str) -> list[str]:
    return list(response.context["adminform"].form.errors.get(field, []))


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def schedule_ids(task: PeriodicTask) -> dict:
    return {kind: getattr(task, f"{kind}_id") for kind in ("interval", "crontab", "clocked", "solar")}


def periodic(name: str = "every-30s", **fields) -> PeriodicTask:
    if not any(kind in fields for kind in ("interval", "crontab", "clocked", "solar")):
        fields["interval"] = IntervalSchedule.objects.get_or_create(every=30, period="seconds")[0]
    fields.setdefault("task", "testproject.videos.tasks.add")
    return PeriodicTask.objects.create(name=name, **fields)


# -- the form ----------------------------------------------------------------------


def test_add_an_interval_task(admin_client):
    response = admin_client.post(ADD, form_data())
    assert response.status_code == 302, response.context["adminform"].form.errors
    task = PeriodicTask.objects.get(name="nightly add")
    assert (task.task, task.args, task.kwargs, task.source) == ("testproject.videos.tasks.add", [1, 2], {}, "admin")
    assert (task.interval.every, task.interval.period) == (30, "seconds")
    assert schedule_ids(task) == {"interval": task.interval_id, "crontab": None, "clocked": None, "solar": None}


def test_a_matching_schedule_row_is_reused(admin_client):
    existing = IntervalSchedule.objects.create(every=30, period="seconds")
    assert admin_client.post(ADD, form_data()).status_code == 302
    assert PeriodicTask.objects.get(name="nightly add").interval_id == existing.pk
    assert IntervalSchedule.objects.count() == 1


def test_add_a_crontab_task(admin_client):
    data = form_data(schedule_kind="crontab", minute="30", hour="7", day_of_week="mon", timezone="Asia/Shanghai",
                     every="", period="")
    assert admin_client.post(ADD, data).status_code == 302
    task = PeriodicTask.objects.get(name="nightly add")
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week, task.crontab.timezone) == (
        "30", "7", "mon", "Asia/Shanghai")
    assert task.interval_id is None


def test_add_clocked_and_solar_tasks(admin_client):
    clocked = form_data(name="once", schedule_kind="clocked", clocked_time_0="2031-05-17", clocked_time_1="08:15:00")
    assert admin_client.post(ADD, clocked).status_code == 302
    task = PeriodicTask.objects.get(name="once")
    assert task.clocked.clocked_time == timezone.make_aware(timezone.datetime(2031, 5, 17, 8, 15))
    solar = form_data(name="dawn", schedule_kind="solar", event="sunrise", latitude="31.2304", longitude="121.4737")
    assert admin_client.post(ADD, solar).status_code == 302
    task = PeriodicTask.objects.get(name="dawn")
    assert admin_client.post(change_url(task), solar).status_code == 302  # saved again: the same row is found
    task.refresh_from_db()
    assert (task.solar.event, task.solar.latitude) == ("sunrise", Decimal("31.230400"))
    assert SolarSchedule.objects.count() == 1


def test_invalid_crontab_field_is_an_error_on_that_field(admin_client):
    data = form_data(schedule_kind="crontab", minute="61", hour="7")
    response = admin_client.post(ADD, data)
    assert response.status_code == 200
    assert any("minute" in e and "61" in e and "out of range" in e for e in errors_of(response, "minute"))
    assert not errors_of(response, "hour")
    assert "out of range 0-59" in response.content.decode()
    assert not PeriodicTask.objects.exists() and not CrontabSchedule.objects.exists()


def test_fields_of_the_other_kinds_are_ignored(admin_client):
    data = form_data(schedule_kind="crontab", minute="5", every="abc", period="fortnights", latitude="x")
    response = admin_client.post(ADD, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    task = PeriodicTask.objects.get(name="nightly add")
    assert task.crontab.minute == "5" and not IntervalSchedule.objects.exists()


def test_invalid_timezone_is_an_error_on_timezone(admin_client):
    response = admin_client.post(ADD, form_data(schedule_kind="crontab", timezone="Mars/Olympus"))
    assert response.status_code == 200 and errors_of(response, "timezone")
    assert not PeriodicTask.objects.exists() and not CrontabSchedule.objects.exists()


def test_the_chosen_kind_needs_its_fields(admin_client):
    response = admin_client.post(ADD, form_data(every="", period=""))
    assert response.status_code == 200
    assert errors_of(response, "every") == ["required by the interval schedule"]
    assert errors_of(response, "period") == ["required by the interval schedule"]
    response = admin_client.post(ADD, form_data(schedule_kind="solar", event="sunrise", latitude="91", longitude="0"))
    assert response.status_code == 200 and errors_of(response, "latitude")
    assert not PeriodicTask.objects.exists() and not SolarSchedule.objects.exists()


def test_invalid_json_args_is_an_error_on_args(admin_client):
    response = admin_client.post(ADD, form_data(args="[1, 2"))
    assert response.status_code == 200
    assert [e for e in errors_of(response, "args") if e.startswith("not valid JSON")]
    assert "[1, 2" in response.content.decode()  # redisplayed as typed
    assert not PeriodicTask.objects.exists() and not IntervalSchedule.objects.exists()


def test_kwargs_must_be_an_object_and_args_a_list(admin_client):
    response = admin_client.post(ADD, form_data(kwargs="[1, 2]", args='{"a": 1}'))
    assert response.status_code == 200
    assert errors_of(response, "kwargs") == ['must be a JSON object, e.g. {"day": "monday"}; got a list']
    assert errors_of(response, "args") == ["must be a JSON list, e.g. [1, 2]; got an object"]
    assert not PeriodicTask.objects.exists() and not IntervalSchedule.objects.exists()


def test_empty_json_means_no_arguments(admin_client):
    assert admin_client.post(ADD, form_data(args="", kwargs="")).status_code == 302
    task = PeriodicTask.objects.get(name="nightly add")
    assert (task.args, task.kwargs) == ([], {})


def test_a_duplicate_name_saves_nothing(admin_client):
    periodic(name="nightly add")
    response = admin_client.post(ADD, form_data(schedule_kind="crontab", minute="5"))
    assert response.status_code == 200 and errors_of(response, "name")
    assert not CrontabSchedule.objects.exists()


def test_task_field_suggests_registered_names_and_accepts_others(admin_client):
    page = admin_client.get(ADD).content.decode()
    assert re.search(r'<input[^>]*name="task"[^>]*list="id_task_names"', page)
    assert '<datalist id="id_task_names">' in page
    assert '<option value="testproject.videos.tasks.add">' in page
    assert "django_tasks_q." not in page.split('<datalist id="id_task_names">')[1].split("</datalist>")[0]
    response = admin_client.post(ADD, form_data(task="only.on.workers"), follow=True)
    assert PeriodicTask.objects.get(name="nightly add").task == "only.on.workers"
    assert any("not registered in this web process" in text for text in message_texts(response))


def test_editing_prefills_the_schedule_and_switching_kind_moves_the_foreign_key(admin_client):
    crontab = CrontabSchedule.objects.create(minute="30", hour="7", day_of_week="1", timezone="Asia/Shanghai")
    task = periodic(name="morning", crontab=crontab, args=[3, 4])
    form = admin_client.get(change_url(task)).context["adminform"].form
    assert form["schedule_kind"].value() == "crontab"
    assert (form["minute"].value(), form["hour"].value(), form["timezone"].value()) == ("30", "7", "Asia/Shanghai")
    assert form["args"].value() == "[3, 4]"

    response = admin_client.post(change_url(task), form_data(name="morning", every="5", period="minutes"))
    assert response.status_code == 302
    task.refresh_from_db()
    assert schedule_ids(task) == {"interval": task.interval_id, "crontab": None, "clocked": None, "solar": None}
    assert str(task.interval) == "every 5 minutes"
    assert CrontabSchedule.objects.filter(pk=crontab.pk).exists()  # shared rows are left alone

    form = admin_client.get(change_url(task)).context["adminform"].form
    assert (form["schedule_kind"].value(), form["every"].value(), form["period"].value()) == (
        "interval", 5, "minutes")


def test_editing_the_crontab_fields_points_at_another_row(admin_client):
    shared = CrontabSchedule.objects.create(minute="0", hour="9")
    first, second = periodic(name="a", crontab=shared), periodic(name="b", crontab=shared)
    data = form_data(name="a", schedule_kind="crontab", minute="15", hour="9")
    assert admin_client.post(change_url(first), data).status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.crontab_id != shared.pk and first.crontab.minute == "15"
    assert second.crontab_id == shared.pk and CrontabSchedule.objects.get(pk=shared.pk).minute == "0"


def test_the_form_offers_no_schedule_selects_and_works_without_javascript(admin_client):
    page = admin_client.get(ADD).content.decode()
    assert 'name="interval"' not in page and 'name="crontab"' not in page
    for kind in ("interval", "crontab", "clocked", "solar"):
        assert f'value="{kind}"' in page and f"schedule-{kind}" in page
    assert 'name="minute"' in page and 'name="clocked_time_0"' in page and 'name="latitude"' in page


# -- the list ----------------------------------------------------------------------


def test_changelist_shows_schedules_in_words_and_next_run(admin_client):
    periodic(name="every-30s")
    crontab = CrontabSchedule.objects.create(minute="30", hour="7", day_of_week="1", timezone="Asia/Shanghai")
    periodic(name="monday-morning", crontab=crontab)
    periodic(name="off", enabled=False)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "every 30 seconds" in page
    assert "At 07:30 on Monday (Asia/Shanghai)" in page
    next_runs = re.findall(r'<td class="field-next_run_display[^"]*">([^<]*)</td>', page)
    assert len(next_runs) == 3
    assert sum(value not in ("", "-") for value in next_runs) == 2  # the disabled task never runs
    periodic(name="late", last_run_at=timezone.now() - timedelta(hours=1))
    page = admin_client.get(CHANGELIST).content.decode()
    assert page.count("(due now)") == 1
    for name in ("every-30s", "monday-morning"):
        assert name in page


def test_changelist_filters_and_search(admin_client):
    periodic(name="on-videos", queue="videos")
    periodic(name="off-default", enabled=False, task="testproject.videos.tasks.noop")
    by_queue = admin_client.get(CHANGELIST, {"queue": "videos"}).content.decode()
    assert "on-videos" in by_queue and "off-default" not in by_queue
    disabled = admin_client.get(CHANGELIST, {"enabled__exact": "0"}).content.decode()
    assert "off-default" in disabled and "on-videos" not in disabled
    searched = admin_client.get(CHANGELIST, {"q": "noop"}).content.decode()
    assert "off-default" in searched and "on-videos" not in searched


# -- actions -----------------------------------------------------------------------


def act(admin_client, action: str, *tasks: PeriodicTask):
    data = {"action": action, "_selected_action": [str(t.pk) for t in tasks]}
    return admin_client.post(CHANGELIST, data, follow=True)


def test_enable_and_disable(admin_client):
    first, second = periodic(name="a"), periodic(name="b", enabled=False)
    response = act(admin_client, "disable", first, second)
    assert not PeriodicTask.objects.filter(enabled=True).exists()
    assert "disabled 2 periodic task(s)" in message_texts(response)
    response = act(admin_client, "enable", second)
    assert list(PeriodicTask.objects.filter(enabled=True).values_list("name", flat=True)) == ["b"]
    assert "enabled 1 periodic task(s)" in message_texts(response)


def test_run_now_sends_without_touching_the_schedule(admin_client, broker):
    broker("memory://")
    queue = f"admin-{uuid.uuid4().hex[:8]}"
    last_run = timezone.now() - timedelta(minutes=1)
    task = periodic(name="run-me", args=[2, 3], kwargs={}, queue=queue, last_run_at=last_run, total_run_count=4)
    response = act(admin_client, "run_now", task)
    assert response.status_code == 200

    received = take(queue)
    message = TaskMessage.from_wire(received.headers, received.decode())
    assert received.headers["task"] == "testproject.videos.tasks.add"
    assert received.headers["periodic_task_name"] == "run-me"
    assert message.args == (2, 3)
    assert any(text.startswith("sent 1 task(s): run-me [") and message.id in text for text in message_texts(response))
    task.refresh_from_db()
    assert (task.last_run_at, task.total_run_count, task.enabled) == (last_run, 4, True)


def test_run_now_uses_the_task_routing_when_the_row_has_no_queue(admin_client, broker):
    broker("memory://")
    task = periodic(name="default-queue", args=[1, 1])
    act(admin_client, "run_now", task)
    received = take("default")
    assert received.headers["periodic_task_name"] == "default-queue"


def test_run_now_with_the_broker_down_is_an_error_message(admin_client, broker):
    broker("redis://127.0.0.1:1/0", BROKER_PUBLISH_RETRIES=0, BROKER_CONNECTION_TIMEOUT=0.5)
    first, second = periodic(name="a"), periodic(name="b")
    response = act(admin_client, "run_now", first, second)
    assert response.status_code == 200
    levels = [m.level_tag for m in get_messages(response.wsgi_request)]
    texts = message_texts(response)
    assert levels == ["error"] and texts[0].startswith("could not send a, b:") and "127.0.0.1:1" in texts[0]
    assert PeriodicTask.objects.get(name="a").total_run_count == 0


def test_run_now_reports_a_refused_call_and_sends_the_others(admin_client, broker, monkeypatch):
    broker("memory://")
    from django_tasks_q.admin import schedules as schedules_admin
    from django_tasks_q.exceptions import EncodeError

    real_send = schedules_admin.send

    def send(name, args, kwargs, options):
        if options["headers"]["periodic_task_name"] == "bad":
            raise EncodeError("cannot serialise args")
        return real_send(name, args, kwargs, options)

    monkeypatch.setattr(schedules_admin, "send", send)
    queue = f"admin-{uuid.uuid4().hex[:8]}"
    bad, good = periodic(name="bad", queue=queue), periodic(name="good", queue=queue)
    texts = message_texts(act(admin_client, "run_now", bad, good))
    assert "could not send bad (testproject.videos.tasks.add): cannot serialise args" in texts
    assert any(text.startswith("sent 1 task(s): good [") for text in texts)
    assert take(queue).headers["periodic_task_name"] == "good"


# -- schedule pages ------------------------------------------------------------------


def test_crontab_page_shows_description_and_next_five_runs(admin_client):
    crontab = CrontabSchedule.objects.create(minute="30", hour="7", day_of_week="1", timezone="Asia/Shanghai")
    periodic(name="monday-morning", crontab=crontab)
    page = admin_client.get(reverse("admin:django_tasks_q_crontabschedule_change", args=[crontab.pk]))
    text = page.content.decode()
    assert "At 07:30 on Monday (Asia/Shanghai)" in text
    runs = re.findall(r"<li>Mon (\d{4}-\d\d-\d\d) 07:30:00 CST &nbsp;=&nbsp; Sun (\d{4}-\d\d-\d\d) 23:30:00 UTC</li>",
                      text)
    assert len(runs) == 5
    assert "monday-morning" in text


def test_crontab_page_refuses_an_invalid_field_naming_it(admin_client):
    data = {"minute": "0", "hour": "25", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
            "timezone": "UTC"}
    response = admin_client.post(reverse("admin:django_tasks_q_crontabschedule_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["hour"] and "hour" in errors["hour"][0]
    assert not CrontabSchedule.objects.exists()


def test_other_schedule_pages(admin_client):
    interval = IntervalSchedule.objects.create(every=1, period="hours")
    clocked = ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(days=1))
    solar = SolarSchedule.objects.create(event="sunset", latitude=Decimal("51.5"), longitude=Decimal("-0.12"))
    pages = {
        "intervalschedule": (interval, "every hour"),
        "clockedschedule": (clocked, "once at"),
        "solarschedule": (solar, "at sunset"),
    }
    for model, (row, words) in pages.items():
        listing = admin_client.get(reverse(f"admin:django_tasks_q_{model}_changelist")).content.decode()
        detail = admin_client.get(reverse(f"admin:django_tasks_q_{model}_change", args=[row.pk])).content.decode()
        assert words in listing and words in detail
    solar_page = admin_client.get(reverse("admin:django_tasks_q_solarschedule_change", args=[solar.pk]))
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", solar_page.content.decode())


def test_beat_lease_is_not_in_the_admin(admin_client):
    page = admin_client.get(reverse("admin:app_list", args=["django_tasks_q"])).content.decode()
    assert "Periodic tasks" in page and "Crontab schedules" in page
    assert "lease" not in page.lower()


def test_changelist_filters_by_schedule_kind(admin_client):
    periodic(name="by-interval")
    periodic(name="by-crontab", crontab=CrontabSchedule.objects.create(minute="0", hour="9", timezone="UTC"))
    crontabs = admin_client.get(CHANGELIST, {"kind": "crontab"}).content.decode()
    assert "by-crontab" in crontabs and "by-interval" not in crontabs
    intervals = admin_client.get(CHANGELIST, {"kind": "interval"}).content.decode()
    assert "by-interval" in intervals and "by-crontab" not in intervals
    assert "schedule kind" in admin_client.get(CHANGELIST).content.decode()


def test_changelist_queries_do_not_grow_with_the_rows(admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    crontab = CrontabSchedule.objects.create(minute="0", hour="*/3", timezone="Europe/London")
    PeriodicTask.objects.bulk_create([PeriodicTask(name=f"row-{number:04d}", task="testproject.videos.tasks.add",
                                                   crontab=crontab) for number in range(10)])
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(CHANGELIST).status_code == 200
    PeriodicTask.objects.bulk_create([PeriodicTask(name=f"row-{number:04d}", task="testproject.videos.tasks.add",
                                                   crontab=crontab) for number in range(10, 2000)])
    with CaptureQueriesContext(connection) as many:
        page = admin_client.get(CHANGELIST).content.decode()
    assert "2000 periodic tasks" in page or "2,000 periodic tasks" in page
    assert len(many.captured_queries) == len(few.captured_queries)  # a page of 100 rows, no query per row
