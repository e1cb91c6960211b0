"""Asking running workers: the client side of remote control (``taskinspect``, ``taskstatus``).

A question is a broadcast on the ``celery.pidbox`` mailbox -- the same one
Celery's ``celery inspect`` uses, answered by ``worker/remote_control.py``
in our workers and by Celery's own workers alike. Replies are gathered
for ``timeout`` seconds (or until every named destination has answered),
and the workers that were asked by name but stayed silent are named too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .broker.connection import new_connection
from .broker.transport.django_bindings import Unroutable
from .worker.remote_control import mailbox
from .worker.worker import expand_hostname

#: what ``taskinspect`` may ask; each is a read-only command of the mailbox
QUESTIONS = ("ping", "active", "reserved", "scheduled", "registered", "stats", "active_queues", "revoked", "conf")


@dataclass
class Replies:
    """What each worker answered, and who was asked by name but did not answer in time."""

    answers: dict[str, Any] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)


def ask(question: str, destination: list[str] | None = None, timeout: float = 1.0) -> Replies:
    """Broadcast a read-only ``question`` and gather the replies."""
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}; ask one of: {', '.join(QUESTIONS)}")
    return broadcast(question, {}, destination, timeout)


def broadcast(method: str, arguments: dict[str, Any], destination: list[str] | None = None,
              timeout: float = 1.0) -> Replies:
    """Send ``method`` to every worker (or those named; ``%h`` expanded) and gather the replies."""
    names = [expand_hostname(name) for name in destination] if destination else None
    with new_connection() as connection:
        try:
            replies = mailbox()(connection)._broadcast(method, arguments, destination=names, reply=True,
                                                       timeout=timeout, limit=len(names) if names else None)
        except Unroutable:  # django:// refuses a broadcast no queue is bound to: no worker listens
            replies = []
    found = Replies()
    for reply in replies or []:
        found.answers.update(reply)
    found.silent = [name for name in names or [] if name not in found.answers]
    return found
