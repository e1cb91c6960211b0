"""Signatures, chains, map/starmap/chunks: building, JSON round trips, partials, and eager results."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from django_tasks_q import AsyncResult, EagerResult, Signature, chain, signature
from django_tasks_q.core.canvas import chunks, xmap, xstarmap
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.worker import workflow
from testproject.videos.tasks import add, echo, fail
from testproject.videos.workflow_tasks import record_errback, record_value

ADD = "testproject.videos.tasks.add"


@pytest.fixture
def published(monkeypatch):
    """What would have gone to the broker: (encoded message, route) per publish."""
    sent = []

    def capture(encoded, route, **kw):
        sent.append(TaskMessage.from_wire(json.loads(json.dumps(encoded.headers)), json.loads(encoded.payload)))

    monkeypatch.setattr("django_tasks_q.core.calling.publish", capture)
    return sent


def test_signature_is_a_celery_shaped_dict_that_survives_json():
    sig = add.s(2, 2).set(queue="videos", countdown=5)
    assert sig == {"task": ADD, "args": (2, 2), "kwargs": {}, "options": {"queue": "videos", "countdown": 5},
                   "subtask_type": None, "immutable": False}
    back = signature(json.loads(json.dumps(sig)))
    assert isinstance(back, Signature) and back == sig
    assert back.delay  # a real signature, not a dict
    assert signature(ADD, (1,), {"y": 2}, {"queue": "q"}, priority=3).options == {"queue": "q", "priority": 3}
    assert add.signature((1, 2), countdown=1) == add.subtask((1, 2), countdown=1)
    assert repr(add.s(1, y=2)) == f"{ADD}(1, y=2)"


def test_signature_rejects_bad_input_naming_it():
    with pytest.raises(TypeError, match="task name"):
        Signature(42)
    with pytest.raises(TypeError, match="args .* must be a list"):
        signature(ADD, args="12")
    with pytest.raises(TypeError, match="kwargs .* must be a dict"):
        signature(ADD, kwargs=[1])
    with pytest.raises(Exception, match="not registered"):
        signature("nowhere.missing")()


def test_partials_prepend_new_args_as_celery():
    assert add.s(3, 4)() == 7  # seed: s_add() -> 7
    assert add.s(1)(10) == 11  # seed: s_add_1(10) -> 11
    assert echo.s(2)(3, z=1) == echo(3, 2, z=1)  # new args come first, as Celery's _merge
    assert echo.si(2)(3) == echo(2)  # immutable: partial args ignored
    clone = add.s(1).clone((5,), queue="q")
    assert clone.args == (5, 1) and clone.options == {"queue": "q"}
    original = add.s(1, 2).set(link=[add.s(9)])
    copy = original.clone()
    copy.options["link"].append(add.s(8))
    assert len(original.options["link"]) == 1  # a clone shares nothing


def test_delay_with_partials_sends_merged_call(published):
    result = add.s(1).set(queue="videos").delay(20)
    [message] = published
    assert isinstance(result, AsyncResult) and message.id == result.id
    assert list(message.args) == [20, 1]


def test_pipe_and_chain_flatten():
    a, b, c, d = add.s(1, 2), add.s(3), add.s(4), add.si(5, 5)
    piped = a | b | (c | d)
    assert isinstance(piped, chain)
    assert [t.args for t in piped.tasks] == [(1, 2), (3,), (4,), (5, 5)]
    assert chain(chain(a, b), chain(c, d)).tasks == piped.tasks
    assert chain(t for t in (a, b)).tasks == [a, b]
    restored = signature(json.loads(json.dumps(piped)))
    assert isinstance(restored, chain) and restored.tasks == piped.tasks
    assert repr(piped) == f"{ADD}(1, 2) | {ADD}(3) | {ADD}(4) | {ADD}(5, 5)!"


def test_chain_sends_first_step_with_the_rest_reversed_and_ids_assigned(published):
    result = chain(add.s(1, 2), add.s(3), add.si(7, 7)).apply_async(countdown=0, task_id="chain-id")
    [message] = published
    assert result.id == "chain-id" and message.id != "chain-id"
    assert message.task == ADD and list(message.args) == [1, 2]
    steps = message.chain
    assert [s["args"] for s in steps] == [[7, 7], [3]]  # reversed: the next step is last
    assert steps[0]["immutable"] is True
    assert result.id == steps[0]["options"]["task_id"]
    assert result.parent.id == steps[1]["options"]["task_id"]
    assert result.parent.parent.id == message.id and result.parent.parent.parent is None
    assert steps[1]["options"]["root_id"] == message.id  # one root for the whole chain


def test_eager_chain_map_starmap_chunks_match_the_seeds(eager):
    result = chain(add.s(1, 2), add.s(3)).delay()
    assert isinstance(result, EagerResult)
    assert result.status == TaskState.SUCCESS and result.get() == 6
    assert result.parent.get() == 3
    assert not hasattr(result, "results")
    assert (add.s(1, 2) | add.s(3)).delay().get() == 6
    assert chain(add.s(1), add.s(3)).delay(3).get() == 7
    assert add.map([1, 2]).delay  # a signature
    assert add.starmap(zip(range(10), range(100))).delay().get() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert add.chunks(zip(range(100), range(100)), 10).delay().get() == [
        list(range(start, start + 20, 2)) for start in range(0, 200, 20)]
    assert echo.map([1, 2]).delay().get() == echo.map([1, 2])() == [echo(1), echo(2)]
    assert repr(add.starmap(zip(range(2), range(2)))) == f"[{ADD}(*x) for x in [[0, 0], [1, 1]]]"


def test_eager_chain_failure_fails_the_rest_with_the_cause(eager):
    result = chain(add.s(1, 2), fail.si("broken"), add.s(1)).delay()
    assert result.state == TaskState.FAILURE
    with pytest.raises(Exception, match="broken"):
        result.get()
    assert result.parent.state == TaskState.FAILURE and result.parent.parent.get() == 3


def test_builtin_signatures_round_trip_as_celery_types():
    for sig in (add.map([1]), add.starmap([(1, 2)]), add.chunks([(1, 2)], 1)):
        data = json.loads(json.dumps(sig))
        assert data["task"] in ("celery.map", "celery.starmap", "celery.chunks") and data["immutable"] is True
        assert data["kwargs"]["task"]["task"] == ADD
        assert type(signature(data)) is type(sig)
    assert isinstance(add.map([1]), xmap) and isinstance(add.starmap([]), xstarmap)
    assert isinstance(add.chunks([], 2), chunks)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        add.chunks([(1, 2)], 0)


def test_eager_link_and_errback_receive_what_celery_gives(eager):
    with tempfile.TemporaryDirectory() as tmp:
        values, errors = os.path.join(tmp, "values"), os.path.join(tmp, "errors")
        add.apply_async((2, 3), link=record_value.s(values))
        with open(values) as fh:
            assert json.loads(fh.read()) == 5
        result = fail.apply_async(("nope",), link_error=record_errback.s(errors))
        assert result.failed()
        with open(errors) as fh:
            got = json.load(fh)
        assert got["id"] == result.id and got["task"] == "testproject.videos.tasks.fail"
        assert got["exc"].endswith("nope") and "Traceback" in got["traceback"]


def test_worker_fails_remaining_chain_steps(eager):
    from django_tasks_q.results.backend import MemoryBackend

    backend = MemoryBackend()
    steps = [add.s(1).clone(task_id="c3"), add.s(1).clone(), add.s(1).clone(task_id="c2")]
    workflow.fail_chain([dict(s) for s in steps], ValueError("cause"), "tb", backend)
    assert backend.meta("c2").state == TaskState.FAILURE and backend.meta("c3").state == TaskState.FAILURE
    assert backend.meta("c2").result["exc_message"] == ["cause"]


@pytest.mark.django_db(transaction=True)  # the executor closes connections left inside a transaction
def test_worker_sends_next_chain_step_written_by_a_celery_client(published):
    """Celery embeds options we have no use for (reply_to, stamps...): the step is still sent, the rest kept."""
    from django_tasks_q.worker.executor import execute

    celery_step = {"task": ADD, "args": [100], "kwargs": {}, "immutable": False, "subtask_type": None,
                   "chord_size": None,
                   "options": {"task_id": "step-2", "reply_to": "abc", "root_id": "step-1", "parent_id": "step-1",
                               "stamped_headers": None, "stamps": {}}}
    last = {**celery_step, "args": [1000], "options": {"task_id": "step-3"}}
    message = TaskMessage(id="step-1", task=ADD, args=(1, 2), chain=[last, celery_step])
    execute(message, {"queue": "default"}, "host")
    [sent] = published
    assert (sent.id, sent.task, list(sent.args)) == ("step-2", ADD, [3, 100])
    assert (sent.parent_id, sent.root_id) == ("step-1", "step-1")
    assert [s["options"]["task_id"] for s in sent.chain] == ["step-3"]


def celery_app_with_add(name: str):
    """A Celery app (protocol 2) whose ``add`` is named like ours; messages it sends are captured."""
    import celery

    app = celery.Celery(name, set_as_current=False, broker="memory://")
    app.conf.task_protocol = 2
    captured: list = []
    app.amqp.send_task_message = lambda producer, name, message, **kw: captured.append(message)

    @app.task(name=ADD, shared=False)
    def celery_add(x, y):
        return x + y

    return celery_add, captured


@pytest.mark.django_db(transaction=True)
def test_a_celery_clients_chain_runs_on_our_worker(published):
    """Celery's own ``chain.apply_async`` builds the message; our executor runs it and sends step two."""
    from kombu.serialization import dumps, loads

    from django_tasks_q.worker.executor import execute

    celery_add, captured = celery_app_with_add("tasksq-canvas")

    result = (celery_add.s(1, 2) | celery_add.s(3) | celery_add.s(4)).apply_async()
    [wire] = captured
    content_type, encoding, payload = dumps(wire.body, serializer="json")
    message = TaskMessage.from_wire(json.loads(json.dumps(wire.headers)), loads(payload, content_type, encoding))
    assert [s["args"] for s in message.chain] == [[4], [3]]  # Celery's order is ours
    execute(message, {"queue": "celery"}, "host")
    [step2] = published
    assert list(step2.args) == [3, 3] and step2.id == result.parent.id
    assert [s["options"]["task_id"] for s in step2.chain] == [result.id]


def test_celerys_worker_continues_a_chain_we_sent(published):
    """Our chain message, read and run by Celery's worker-side Request: Celery sends step two."""
    import types

    from celery.worker.request import Request as CeleryRequest
    from kombu.serialization import dumps, loads

    celery_add, captured = celery_app_with_add("tasksq-canvas-2")

    result = (add.s(1, 2) | add.s(3) | add.s(4)).delay()
    [ours] = published
    encoded = ours.encode("json")
    kombu_message = types.SimpleNamespace(
        headers=json.loads(json.dumps(encoded.headers)), body=encoded.payload,
        payload=loads(encoded.payload, encoded.content_type, encoded.content_encoding),
        content_type=encoded.content_type, content_encoding=encoded.content_encoding,
        delivery_info={"exchange": "", "routing_key": "default"}, properties={"correlation_id": ours.id})
    assert CeleryRequest(kombu_message, app=celery_add.app, task=celery_add).execute() == 3
    [wire] = captured
    content_type, encoding, payload = dumps(wire.body, serializer="json")
    step2 = TaskMessage.from_wire(json.loads(json.dumps(wire.headers)), loads(payload, content_type, encoding))
    assert (step2.id, list(step2.args), step2.parent_id) == (result.parent.id, [3, 3], ours.id)
    assert [s["options"]["task_id"] for s in step2.chain] == [result.id]
