"""Canvas messages captured off the publisher and run through the real executor, with no broker.

Used by the group/chord unit tests of both result backends (``test_groups.py``,
``test_results_redis.py``): ``outbox`` collects every message a test sends,
decoded as a worker reads it; ``work`` runs them like a worker would.
"""

from __future__ import annotations

import json

import pytest

from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.worker.executor import execute


@pytest.fixture
def outbox(monkeypatch) -> list[TaskMessage]:
    """Every message sent, decoded as a worker reads it (nothing reaches a broker)."""
    sent: list[TaskMessage] = []

    def capture(encoded, route, task_id=None, deliver_at=None):
        payload = encoded.payload.decode() if isinstance(encoded.payload, bytes) else encoded.payload
        sent.append(TaskMessage.from_wire(encoded.headers, json.loads(payload)))

    monkeypatch.setattr("django_tasks_q.core.calling.publish", capture)
    return sent


def work(outbox: list[TaskMessage], order: list[int] | None = None) -> None:
    """Run the captured messages (those at ``order``'s indices, in that order; default all), then
    whatever running them sends. Captured messages left out of ``order`` are not run."""
    pending = [outbox[i] for i in order] if order is not None else list(outbox)
    done = {m.id for m in outbox}
    while pending:
        execute(pending.pop(0), {"queue": "default", "routing_key": "default"}, "unit@host")
        for message in outbox:
            if message.id not in done:
                done.add(message.id)
                pending.append(message)
