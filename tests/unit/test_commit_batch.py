"""``delay_on_commit()`` in batches (``core/commit_batch.py``), with real commits and rollbacks.

Eager mode runs each task as it is sent, so the order in which ``ran`` fills
up is the order of the sends; ``publish_many`` counts the batches."""

from __future__ import annotations

import pytest
from django.db import transaction

from django_tasks_q import Task, task
from django_tasks_q.core import commit_batch

pytestmark = pytest.mark.django_db(transaction=True)  # real commits and rollbacks


@pytest.fixture
def ran(eager, clean_registry, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("eager mode published a message")

    monkeypatch.setattr("django_tasks_q.core.calling.publish", refuse)
    return []


@pytest.fixture
def remember(ran):
    @task
    def remember(x):
        ran.append(x)

    return remember


def test_calls_in_a_row_go_out_together_after_the_commit(ran, remember, monkeypatch):
    runs = []
    send_many = commit_batch.send_many
    monkeypatch.setattr(commit_batch, "send_many", lambda name, calls, *a, **k: (runs.append(len(calls)),
                                                                                  send_many(name, calls, *a, **k)))
    with transaction.atomic():
        for x in range(5):
            remember.delay_on_commit(x)
        assert ran == []
    assert ran == [0, 1, 2, 3, 4]
    assert runs == [5]


def test_a_rolled_back_savepoint_drops_only_its_own_calls(ran, remember):
    with transaction.atomic():
        remember.delay_on_commit(1)
        try:
            with transaction.atomic():
                remember.delay_on_commit("rolled back")
                raise RuntimeError
        except RuntimeError:
            pass
        remember.delay_on_commit(2)
        with transaction.atomic():  # a savepoint that commits keeps its calls
            remember.delay_on_commit(3)
    assert ran == [1, 2, 3]


def test_a_rolled_back_transaction_sends_nothing_and_the_next_one_starts_afresh(ran, remember):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            remember.delay_on_commit("never")
            raise RuntimeError
    with transaction.atomic():
        remember.delay_on_commit("sent")
    assert ran == ["sent"]


def test_other_on_commit_callbacks_keep_their_place_between_the_sends(ran, remember):
    with transaction.atomic():
        remember.delay_on_commit(1)
        remember.delay_on_commit(2)
        transaction.on_commit(lambda: ran.append("mine"))
        remember.delay_on_commit(3)
    assert ran == [1, 2, "mine", 3]


def test_runs_of_different_tasks_keep_their_order(ran, remember):
    @task
    def other(x):
        ran.append(f"other {x}")

    with transaction.atomic():
        remember.delay_on_commit(1)
        other.delay_on_commit(2)
        other.delay_on_commit(3)
        remember.delay_on_commit(4)
    assert ran == [1, "other 2", "other 3", 4]


def test_a_task_class_overriding_apply_async_is_sent_through_it(ran):
    class Audited(Task):
        def apply_async(self, args=None, kwargs=None, **options):
            ran.append(("audited", tuple(args)))
            return super().apply_async(args, kwargs, **options)

    @task(base=Audited)
    def audited(x):
        ran.append(x)

    with transaction.atomic():
        audited.delay_on_commit(1)
        audited.delay_on_commit(2)
    assert ran == [("audited", (1,)), 1, ("audited", (2,)), 2]


def test_outside_a_transaction_it_is_sent_at_once(ran, remember):
    assert remember.delay_on_commit(5) is None
    assert ran == [5]


def test_in_manual_transaction_mode_it_refuses_as_django_does(ran, remember):
    from django.db.transaction import TransactionManagementError

    transaction.set_autocommit(False)
    try:
        with pytest.raises(TransactionManagementError):
            remember.delay_on_commit("never")
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert ran == []
