"""Asking running workers: the client side of remote control (``taskinspect``, ``taskstatus``).

A question is a broadcast on the ``celery.pidbox`` mailbox -- the same one
Celery's ``celery inspect`` uses, answered by ``worker/remote_control.py``
in our workers and by Celery's own workers alike. Replies are gathered
for ``timeout`` seconds (or until every named destination has answered),
and the workers that were asked by name but stayed silent are named too.

With ``SIGNING_KEY`` set, every command is signed and every reply must be
sealed by a worker holding the key (worker/control_signing.py); a reply
that is not is kept apart, in :attr:`Replies.unverified`, never taken as
an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .broker.connection import new_connection
from .broker.transport.django_bindings import Unroutable
from .worker import control_signing
from .worker.remote_control import mailbox
from .worker.worker import expand_hostname

#: what ``taskinspect`` may ask; each is a read-only command of the mailbox
QUESTIONS = ("ping", "active", "reserved", "scheduled", "registered", "stats", "active_queues", "revoked", "conf")


@dataclass
class Replies:
    """What each worker answered, and who was asked by name but did not answer in time."""

    answers: dict[str, Any] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)
    #: signing on: replies not sealed with our key (a worker without it, Celery's, or a forgery), by sender
    unverified: dict[str, Any] = field(default_factory=dict)


def ask(question: str, destination: list[str] | None = None, timeout: float = 1.0,
        arguments: dict[str, Any] | None = None) -> Replies:
    """Broadcast a read-only ``question`` (with ``arguments``, e.g. ``{"safe": False}``) and gather the replies."""
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}; ask one of: {', '.join(QUESTIONS)}")
    return broadcast(question, dict(arguments or {}), destination, timeout)


def broadcast(method: str, arguments: dict[str, Any], destination: list[str] | None = None,
              timeout: float = 1.0) -> Replies:
    """Send ``method`` to every worker (or those named; ``%h`` expanded) and gather the replies."""
    names = [expand_hostname(name) for name in destination] if destination else None
    keys = control_signing.keys()
    with new_connection() as connection:
        box = mailbox()(connection)
        box.signing_key = keys[0] if keys else None
        try:
            replies = box._broadcast(method, arguments, destination=names, reply=True,
                                     timeout=timeout, limit=len(names) if names else None)
        except Unroutable:  # django:// refuses a broadcast no queue is bound to: no worker listens
            replies = []
    found = Replies()
    for reply in replies or []:
        for hostname, answer in (reply.items() if isinstance(reply, dict) else ()):
            if not keys:
                found.answers[hostname] = answer
                continue
            verified, value = control_signing.open_reply(keys, hostname, box.last_ticket, answer)
            if verified:
                found.answers[hostname] = value
            else:
                found.unverified[hostname] = answer
    found.silent = [name for name in names or [] if name not in found.answers and name not in found.unverified]
    return found
