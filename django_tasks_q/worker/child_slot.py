"""What a prefork child tells its parent without a message: a page of shared memory per child.

The prefork parent (worker/supervisor.py) must know, at any moment, which
task each child runs -- to enforce its hard time limit, to terminate it, to
record it when the child dies under it, to answer ``inspect active`` -- and
the child's counters for the heartbeat. Sending that over a pipe would cost
the parent a wake-up and a read per task; here the child writes it into a
memory-mapped file both processes map, and the parent reads it when it looks
(every few tens of milliseconds, and on demand). Writing a task's entry costs
the child a pickle of its message (about 2 µs) and a copy.

Layout: a header of fixed fields (``_HEAD``), the running task's message
pickled behind it. The task fields are guarded by a sequence number (a
*seqlock*): the child makes it odd before it writes them and even after, and
a reader that saw it odd or changed reads again. The counters are single
values, written without it; a torn read of one is off for one look only.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Any

#: seq, busy, acks_late, blob length, started (epoch), deadline (monotonic; 0: none),
#: processed, failed, loop_at, received_at, progress_at, broker_error_since (monotonic; 0: none),
#: task id, task name, broker error text
_HEAD = struct.Struct("<QBB2xIddQQdddd64s200s200s")
_SEQ = struct.Struct("<Q")
_TASK = struct.Struct("<BB2xIdd")  # busy .. deadline, at offset 8
_COUNTS = struct.Struct("<QQ")  # processed, failed, at offset 32
_STAMP = struct.Struct("<d")
_IDS = struct.Struct("<64s200s")
_TEXT = struct.Struct("<200s")
_OFF_TASK, _OFF_COUNTS, _OFF_LOOP, _OFF_RECEIVED, _OFF_PROGRESS, _OFF_ERROR_SINCE = 8, 32, 48, 56, 64, 72
_OFF_IDS, _OFF_ERROR = 80, 344
_BLOB = 1024  # the pickled message starts here
assert _HEAD.size == _OFF_ERROR + _TEXT.size <= _BLOB
SIZE = 256 * 1024  # a message larger than the room left is not kept: the parent reads its id and name only


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class Running:
    """The task a child runs, as the parent reads it."""

    seq: int
    task_id: str
    task_name: str
    acks_late: bool
    started: float  # epoch seconds
    deadline: float | None  # monotonic seconds: the hard time limit
    message: Any  # the TaskMessage, or None when it was too large to keep
    delivery_info: dict


class Slot:
    """One child's page. The parent creates it (:meth:`create`), the child maps it by path (:meth:`attach`)."""

    def __init__(self, path: str, memory: mmap.mmap):
        self.path = path
        self._memory = memory
        self._seq = 0

    @classmethod
    def create(cls) -> Slot:
        fd, path = tempfile.mkstemp(prefix="tasksq-child-", dir=_shm_dir())
        try:
            os.ftruncate(fd, SIZE)
            memory = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        slot = cls(path, memory)
        slot.stamp(_OFF_LOOP)
        return slot

    @classmethod
    def attach(cls, path: str) -> Slot:
        """Map the parent's page (in the child), then remove its name: the two mappings keep it."""
        fd = os.open(path, os.O_RDWR)
        try:
            memory = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        slot = cls(path, memory)
        slot._seq = _SEQ.unpack_from(memory, 0)[0]
        slot.unlink()
        return slot

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.unlink()
        self._memory.close()

    # -- the child writes ------------------------------------------------
    def started(self, message: Any, delivery_info: dict, acks_late: bool, started: float,
                deadline: float | None) -> None:
        blob = pickle.dumps((message, delivery_info), protocol=pickle.HIGHEST_PROTOCOL)
        if len(blob) > SIZE - _BLOB:
            blob = b""
        memory = self._memory
        self._seq += 1
        _SEQ.pack_into(memory, 0, self._seq)
        memory[_BLOB:_BLOB + len(blob)] = blob
        _TASK.pack_into(memory, _OFF_TASK, 1, acks_late, len(blob), started, deadline or 0.0)
        _IDS.pack_into(memory, _OFF_IDS, message.id.encode()[:64], message.task.encode()[:200])
        self._seq += 1
        _SEQ.pack_into(memory, 0, self._seq)

    def finished(self, processed: int, failed: int) -> None:
        memory = self._memory
        self._seq += 1
        _SEQ.pack_into(memory, 0, self._seq)
        _TASK.pack_into(memory, _OFF_TASK, 0, 0, 0, 0.0, 0.0)
        self._seq += 1
        _SEQ.pack_into(memory, 0, self._seq)
        _COUNTS.pack_into(memory, _OFF_COUNTS, processed, failed)
        self.stamp(_OFF_PROGRESS)

    def stamp(self, offset: int) -> None:
        _STAMP.pack_into(self._memory, offset, time.monotonic())

    def broker_error(self, text: str | None) -> None:
        """The child's broker connection failed (``text``) or works again (``None``)."""
        if text is None:
            _STAMP.pack_into(self._memory, _OFF_ERROR_SINCE, 0.0)
            return
        _TEXT.pack_into(self._memory, _OFF_ERROR, text.encode(errors="replace")[:200])
        if not _STAMP.unpack_from(self._memory, _OFF_ERROR_SINCE)[0]:
            self.stamp(_OFF_ERROR_SINCE)

    # -- the parent reads ------------------------------------------------
    def running(self, with_message: bool = True) -> Running | None:
        """The task the child runs now, or ``None`` when it is idle."""
        memory = self._memory
        for _ in range(1000):
            seq = _SEQ.unpack_from(memory, 0)[0]
            if seq % 2:
                continue
            busy, acks_late, length, started, deadline = _TASK.unpack_from(memory, _OFF_TASK)
            task_id, task_name = _IDS.unpack_from(memory, _OFF_IDS)
            blob = bytes(memory[_BLOB:_BLOB + length]) if with_message and busy else b""
            if _SEQ.unpack_from(memory, 0)[0] != seq:
                continue
            if not busy:
                return None
            message, delivery_info = pickle.loads(blob) if blob else (None, {})
            return Running(seq, task_id.rstrip(b"\0").decode(), task_name.rstrip(b"\0").decode(), bool(acks_late),
                           started, deadline or None, message, delivery_info)
        return None  # the child keeps writing (it is alive and busy): the next look reads it

    def seq(self) -> int:
        return _SEQ.unpack_from(self._memory, 0)[0]

    def counts(self) -> tuple[int, int]:
        """(processed, failed) as the child last wrote them."""
        return _COUNTS.unpack_from(self._memory, _OFF_COUNTS)

    def stamps(self) -> tuple[float, float, float]:
        """(loop_at, received_at, progress_at), monotonic seconds; 0 for never."""
        return (_STAMP.unpack_from(self._memory, _OFF_LOOP)[0], _STAMP.unpack_from(self._memory, _OFF_RECEIVED)[0],
                _STAMP.unpack_from(self._memory, _OFF_PROGRESS)[0])

    def broker_error_since(self) -> tuple[float | None, str]:
        since = _STAMP.unpack_from(self._memory, _OFF_ERROR_SINCE)[0]
        if not since:
            return None, ""
        return since, _TEXT.unpack_from(self._memory, _OFF_ERROR)[0].rstrip(b"\0").decode(errors="replace")


#: the parent's cold shutdown, to each child: leave the running task (worker/child.py)
COLD_SIGNAL = signal.SIGUSR2


class SharedClock:
    """The worker's Lamport clock (kombu's ``LamportClock``), one for the parent and all its children.

    Events from every process of a prefork worker carry one sequence of clock values, as a Celery
    worker's do (its parent sends them all), so a monitor that orders them by clock orders them right.
    It takes no lock -- a process killed holding one would stop every other's events: each process
    counts its own steps, never below the highest value any has published (``shared``), and puts its
    own index in the low byte, so no two processes give the same value. A racing write may leave
    ``shared`` one step behind; that only lets two processes' values interleave, never repeat.
    """

    def __init__(self, context: Any, index: int = 0, shared: Any = None):
        self._shared = shared if shared is not None else context.RawValue("Q", 0)
        self.index = index & 0xFF
        self._steps = 0

    def for_child(self, index: int) -> SharedClock:
        """The same clock for another process, with its own index (1-255; 0 is the parent's)."""
        return SharedClock(None, 1 + (index % 255), self._shared)

    @property
    def value(self) -> int:
        return max(self._shared.value, (self._steps << 8) | self.index)

    def forward(self) -> int:
        self._steps = max(self._steps, self._shared.value >> 8) + 1
        value = (self._steps << 8) | self.index
        if value > self._shared.value:
            self._shared.value = value
        return value

    def adjust(self, other: int) -> int:
        self._steps = max(self._steps, other >> 8)
        return self.forward()


OFF_LOOP, OFF_RECEIVED = _OFF_LOOP, _OFF_RECEIVED

__all__ = ["COLD_SIGNAL", "OFF_LOOP", "OFF_RECEIVED", "SIZE", "Running", "SharedClock", "Slot"]
