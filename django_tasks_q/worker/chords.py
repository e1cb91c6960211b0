"""Chord accounting in the worker: hand each finished chord member to the result backend.

No task polls for a chord's header. Each member message carries the body in
the protocol v2 ``embed["chord"]`` and the group id in its ``group`` header;
when a member (or a chain that may end in one) has finished, the executor
calls ``on_member_finished``, which passes it to the result backend's
``on_chord_part_return``. The backend counts it -- on a ``ChordCounter`` row
(``results/database_chords.py``) or on Celery's chord keys in Redis
(``results/redis_chords.py``), so Celery workers and ours can share one
chord's header -- and the call that completes the header sends the body
exactly once, or records it FAILURE and runs its errbacks. A member that
retries has not finished: only its last attempt counts.
"""

from __future__ import annotations

from typing import Any

from ..core.protocol import TaskMessage
from ..results.database_chords import increment as _increment  # noqa: F401 - the ORM counter, for tests

__all__ = ["on_member_finished"]


def on_member_finished(message: TaskMessage, state: str, retval: Any, request: Any, backend: Any) -> None:
    """Count a finished chord member; fire or fail the body when this member decides it."""
    backend.on_chord_part_return(message, state, retval)
