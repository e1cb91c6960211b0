"""Groups and chords without a worker process: ``GroupResult`` on real ``TaskResult`` rows, members run
through the real executor from captured messages, eager mode, and the chord counter under concurrency."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from django.db import connections

from django_tasks_q import chord, group
from django_tasks_q.core.canvas import Signature, signature
from django_tasks_q.core.context import Request
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import ChordError, ImproperlyConfigured, TimeoutError
from django_tasks_q.models import ChordCounter, GroupResultMeta, TaskResult
from django_tasks_q.results.async_result import AsyncResult
from django_tasks_q.results.backend import describe_exception, get_backend
from django_tasks_q.results.group_result import GroupResult
from django_tasks_q.worker import chords
from testproject.videos.tasks import add, echo, fail, log, mark
from tests.unit.outbox import outbox, work  # noqa: F401 - outbox is a fixture

NAME = "testproject.videos.tasks.add"


def store(task_id: str, state: str, result=None) -> None:
    get_backend().mark(task_id, state, result=result, request=Request(id=task_id, task=NAME), task_name=NAME)


def test_group_result_reads_members_in_order_and_counts_states():
    ids = [f"m-{i}" for i in range(4)]
    group = GroupResult("g-1", [AsyncResult(i) for i in ids])
    assert group.waiting() and not group.ready() and group.completed_count() == 0
    with pytest.raises(TimeoutError, match="group g-1 not ready after 0.05s"):
        group.get(timeout=0.05, interval=0.01)

    for i, task_id in reversed(list(enumerate(ids))):  # finishing in reverse keeps the group's order
        store(task_id, TaskState.SUCCESS, i * 10)
    assert group.ready() and not group.waiting() and group.successful() and not group.failed()
    assert group.completed_count() == 4
    assert group.get(timeout=1) == [0, 10, 20, 30] == group.join(timeout=1)
    assert [r.id for r in group.results] == ids and len(group) == 4 and group[1].id == "m-1"


def test_failed_member_raises_or_stands_in_place():
    group = GroupResult("g-2", [AsyncResult("ok-1"), AsyncResult("bad"), AsyncResult("ok-2")])
    store("ok-1", TaskState.SUCCESS, 1)
    store("bad", TaskState.FAILURE, describe_exception(ValueError("member broke")))
    store("ok-2", TaskState.SUCCESS, 2)
    assert group.ready() and group.failed() and not group.successful() and group.completed_count() == 2
    with pytest.raises(ValueError, match="member broke"):
        group.get(timeout=1)
    values = group.get(timeout=1, propagate=False)
    assert values[0] == 1 and values[2] == 2
    assert isinstance(values[1], ValueError) and str(values[1]) == "member broke"


def test_empty_group_is_ready_at_once():
    group = GroupResult("g-empty", [])
    assert group.get(timeout=0) == [] and group.ready() and group.successful() and group.completed_count() == 0


def test_save_and_restore_keep_the_order():
    ids = [str(uuid.uuid4()) for _ in range(3)]
    GroupResult("g-3", [AsyncResult(i) for i in ids]).save()
    assert GroupResultMeta.objects.get(group_id="g-3").result_ids == ids
    restored = GroupResult.restore("g-3")
    assert restored.id == "g-3" and [r.id for r in restored.results] == ids
    assert GroupResult.restore("never-saved") is None
    restored.delete()
    assert GroupResult.restore("g-3") is None


def member(group_id: str, index: int, body: dict, name: str = NAME) -> TaskMessage:
    return TaskMessage(id=f"{group_id}-{index}", task=name, group_id=group_id, group_index=index, chord=body)


def test_failed_member_fails_the_chord_once_with_its_name():
    body = {"task": NAME, "args": [], "kwargs": {}, "options": {"task_id": "body-1"}, "immutable": False}
    ChordCounter.objects.create(group_id="c-1", total=3, body=body, result_ids=["c-1-0", "c-1-1", "c-1-2"])
    backend = get_backend()
    chords.on_member_finished(member("c-1", 1, body), TaskState.FAILURE, KeyError("nope"), None, backend)
    chords.on_member_finished(member("c-1", 2, body), TaskState.FAILURE, KeyError("again"), None, backend)
    result = AsyncResult("body-1")
    assert result.state == TaskState.FAILURE
    with pytest.raises(ChordError) as raised:
        result.get(timeout=1)
    assert str(raised.value) == f"chord member {NAME}[c-1-1] failed: KeyError: 'nope'"
    # the remaining member succeeding does not run the body of a failed chord
    chords.on_member_finished(member("c-1", 0, body), TaskState.SUCCESS, 1, None, backend)
    assert TaskResult.objects.get(task_id="body-1").state == TaskState.FAILURE


def test_a_retrying_member_is_not_counted():
    body = {"task": NAME, "args": [], "kwargs": {}, "options": {"task_id": "body-2"}, "immutable": False}
    ChordCounter.objects.create(group_id="c-2", total=2, body=body, result_ids=["c-2-0", "c-2-1"])
    chords.on_member_finished(member("c-2", 0, body), TaskState.RETRY, None, None, get_backend())
    assert ChordCounter.objects.get(group_id="c-2").done == 0


@pytest.mark.django_db(transaction=True)
def test_counter_increments_race_and_exactly_one_sees_the_total():
    """Threads on their own database connections increment the same row at once."""
    threads_n, each = 6, 25
    total = threads_n * each
    ChordCounter.objects.create(group_id="race", total=total, body={"task": NAME}, result_ids=[])
    seen: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads_n)

    def work():
        try:
            start.wait()
            for _ in range(each):
                counter = chords._increment("race")
                with lock:
                    seen.append(counter["done"])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(seen) == list(range(1, total + 1))  # every increment read its own new value
    assert seen.count(total) == 1
    assert ChordCounter.objects.get(group_id="race").done == total


# -- group and chord through the real executor, messages captured off the publisher -----------


def s(task, *args, **options) -> Signature:
    return signature(task, args, **options)


@pytest.mark.django_db(transaction=True)
def test_group_sends_members_with_group_id_and_index(outbox):
    result = group(s(add, i, i) for i in range(10)).delay()
    assert [(m.task, m.args, m.group_id, m.group_index) for m in outbox] == [
        ("testproject.videos.tasks.add", (i, i), result.id, i) for i in range(10)]
    assert [r.id for r in result.results] == [m.id for m in outbox]
    work(outbox, order=list(reversed(range(10))))
    assert result.get(timeout=1) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert TaskResult.objects.filter(group_id=result.id).count() == 10


@pytest.mark.django_db(transaction=True)
def test_empty_group_sends_nothing_and_an_empty_chord_sends_only_its_body(outbox, settings):
    result = group([]).apply_async()
    assert outbox == [] and result.get(timeout=0) == [] and result.ready()
    result = chord([], log.s()).delay()
    assert [(m.task, m.args, m.id) for m in outbox] == [("testproject.videos.tasks.log", ([],), result.id)]
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": None}
    with pytest.raises(ImproperlyConfigured, match="chord needs a result backend that counts its members"):
        chord([add.s(1, 1)], log.s()).delay()


@pytest.mark.django_db(transaction=True)
def test_chord_body_runs_once_with_results_in_order(outbox):
    result = chord(group(s(add, i, i) for i in range(10)), s(log)).delay()
    header = outbox[:]
    assert len(header) == 10 and all(m.chord["task"] == "testproject.videos.tasks.log" for m in header)
    assert header[0].chord["options"]["task_id"] == result.id
    work(outbox, order=[3, 9, 0, 1, 2, 8, 7, 4, 6, 5])  # finishing out of order
    assert result.get(timeout=1) == "LOG: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]"
    assert [m.task for m in outbox].count("testproject.videos.tasks.log") == 1
    assert not ChordCounter.objects.exists()  # fired and cleaned up
    assert result.parent.get(timeout=1) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


@pytest.mark.django_db(transaction=True)
def test_chord_called_with_its_body_and_partial_body_args(outbox):
    result = chord([s(add, 1, 1), s(add, 2, 2)])(s(add, [10]))  # add([2, 4], [10])
    work(outbox)
    assert result.get(timeout=1) == [2, 4, 10]


@pytest.mark.django_db(transaction=True)
def test_chord_with_a_failing_member_fails_naming_it_and_runs_link_error(outbox, tmp_path):
    flag = tmp_path / "errback"
    body = s(log, link_error=[Signature(mark, (str(flag), "errback ran"), immutable=True)])
    result = chord([s(add, 1, 1), s(fail, "member broke"), s(add, 2, 2)], body).delay()
    failing = outbox[1]
    work(outbox)
    with pytest.raises(ChordError) as raised:
        result.get(timeout=1)
    assert str(raised.value) == (f"chord member testproject.videos.tasks.fail[{failing.id}] failed: "
                                 "ValueError: member broke")
    assert "testproject.videos.tasks.log" not in [m.task for m in outbox]
    assert flag.read_text().startswith("errback ran")


def test_group_and_chord_in_eager_mode_give_the_same_results(eager):
    assert group(s(add, i, i) for i in range(10)).delay().get() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert group().delay().get() == []
    result = chord(group(s(add, i, i) for i in range(10)), s(log)).delay()
    assert result.get() == "LOG: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" and result.status == "SUCCESS"
    failed = chord([s(add, 1, 1), s(fail, "eager broke")], s(log)).delay()
    assert failed.failed()
    with pytest.raises(ChordError, match=r"chord member testproject.videos.tasks.fail\[.*\] failed: "
                                          r"ValueError: eager broke"):
        failed.get()


@pytest.mark.django_db(transaction=True)
def test_chain_inside_group_and_chord(outbox):
    """A chain member's result is its last step's; in a chord that step is what gets counted."""
    from django_tasks_q import chain

    result = group([add.s(1, 1) | add.s(10), add.s(2, 2)]).delay()
    work(outbox)
    assert result.get(timeout=1) == [12, 4]

    outbox.clear()
    result = chord([add.s(1, 1) | add.s(10) | add.s(100), add.s(2, 2)], log.s()).delay()
    work(outbox)
    assert result.get(timeout=1) == "LOG: [112, 4]"
    assert isinstance(chain(add.s(1, 1)), chain)


@pytest.mark.django_db(transaction=True)
def test_chord_inside_chain_and_group_followed_by_a_task(outbox):
    from django_tasks_q import chain

    # add(1, 1) -> each member gets 2 first -> [2+1, 2+2] -> log -> the step after the chord
    result = chain(add.s(1, 1), chord([add.s(1), add.s(2)], log.s()), echo.s("after")).delay()
    work(outbox)
    assert result.get(timeout=1) == {"args": ["LOG: [3, 4]", "after"], "kwargs": {}}
    assert result.parent.get(timeout=1) == "LOG: [3, 4]"

    outbox.clear()
    result = (group(add.s(i, i) for i in range(3)) | log.s()).delay()  # group | task is a chord
    work(outbox)
    assert result.get(timeout=1) == "LOG: [0, 2, 4]"


def test_chain_with_group_and_chord_in_eager_mode(eager):
    from django_tasks_q import chain

    assert group([add.s(1, 1) | add.s(10), add.s(2, 2)]).delay().get() == [12, 4]
    result = chain(add.s(1, 1), chord([add.s(1), add.s(2)], log.s()), echo.s("after")).delay()
    assert result.get() == {"args": ["LOG: [3, 4]", "after"], "kwargs": {}}


def test_a_member_killed_under_its_worker_fails_the_chord():
    """``record_stopped`` (hard time limit, terminate) counts as the member failing."""
    from django_tasks_q.exceptions import TimeLimitExceeded
    from django_tasks_q.worker.executor import record_stopped

    body = {"task": NAME, "args": [], "kwargs": {}, "options": {"task_id": "body-3"}, "immutable": False}
    ChordCounter.objects.create(group_id="c-3", total=2, body=body, result_ids=["c-3-0", "c-3-1"])
    record_stopped(member("c-3", 0, body), {"queue": "default"}, "w@h", TimeLimitExceeded("hard limit 1s"))
    with pytest.raises(ChordError, match=r"chord member .*\[c-3-0\] failed: TimeLimitExceeded: hard limit 1s"):
        AsyncResult("body-3").get(timeout=1)


@pytest.mark.django_db(transaction=True)
def test_a_chain_member_failing_midway_fails_the_chord(outbox):
    result = chord([add.s(1, 1), fail.s("midway") | add.s(10)], log.s()).delay()
    work(outbox)
    with pytest.raises(ChordError, match=r"chord member testproject.videos.tasks.fail\[.*\] failed: "
                                         r"ValueError: midway"):
        result.get(timeout=1)
    assert "testproject.videos.tasks.log" not in [m.task for m in outbox]


RACER = """
import os, sys, time
import django
django.setup()
from django_tasks_q.worker import chords
from testproject.videos.tasks import add, echo, fail, log, mark
go, rounds = sys.argv[1], int(sys.argv[2])
while not os.path.exists(go):
    time.sleep(0.005)
print(" ".join(str(chords._increment("race")["done"]) for _ in range(rounds)), flush=True)
"""


def test_counter_is_atomic_across_processes_on_postgresql(postgres_url, tmp_path):
    """Four processes with their own PostgreSQL connections increment one ChordCounter at once."""
    import subprocess
    import sys

    from tests import servers
    from tests.workers import ROOT

    url = servers.create_database(postgres_url, f"tq_chord_{uuid.uuid4().hex[:10]}")
    env = {**os.environ, "TESTPROJECT_DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    create = ("import django; django.setup(); from django_tasks_q.models import ChordCounter; "
              "ChordCounter.objects.create(group_id='race', total=200, body={})")
    subprocess.run([sys.executable, "-c", create], cwd=ROOT, env=env, check=True)
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(go), "50"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.5)  # let every racer import Django and wait at the line
    go.touch()
    seen = []
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        seen += [int(v) for v in out.split()]
    assert sorted(seen) == list(range(1, 201))  # each increment read its own value: exactly one saw 200
