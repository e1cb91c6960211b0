"""The Redis result backend, in Celery's key and JSON layout.

``RESULT_BACKEND = "redis://host:6379/1"`` (or ``rediss://``). Each task's
state is one JSON document under ``celery-task-meta-<id>``, written with
an expiry (``RESULT_EXPIRES``) and published on a channel of the same name
in the same round trip -- exactly what Celery's Redis backend writes and
listens for, so during a migration Celery's ``AsyncResult`` reads what our
workers stored and ours reads what Celery's workers stored. A saved group
is ``celery-taskset-meta-<id>`` holding Celery's ``as_tuple()`` layout;
chords are counted on Celery's chord keys next to it (``results/redis_chords.py``).

``get()`` subscribes to the key's channel *before* reading the key, then
sleeps on the subscription: no polling, and no gap in which a result
published between the read and the subscription could be missed. Each
thread keeps its subscription connection from one ``get()`` to the next.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..conf import settings
from ..core.states import READY_STATES, TaskState
from ..exceptions import TimeoutError
from ..lua import load_script
from ..resp import resp_many
from .backend import ResultBackend, ResultMeta
from .celery_meta import decode_group, decode_meta, encode_group, encode_meta
from .redis_keys import GROUP_PREFIX, TASK_PREFIX, group_key, task_key  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from ..core.protocol import TaskMessage

#: Connections one process opens to the result store at most (redis-py's default limit) ...
MAX_CONNECTIONS = 100
#: ... and how long a writer waits for one of them before the write fails.
CONNECTION_WAIT = 30.0
#: Threads per process that keep a connection of their own for result writes at once (ThreadConnection).
THREAD_CONNECTIONS = 8
#: The states a STARTED write never replaces (QUIET_SCRIPT's last arguments), in a fixed order.
FINAL_STATES = tuple(sorted(READY_STATES))
logger = logging.getLogger(__name__)


#: STARTED and RECEIVED as :meth:`RedisBackend.mark_started` / ``mark_received`` write them without waiting:
#: never over a later state (``lua/quiet_write.lua``).
QUIET_SCRIPT = load_script(__name__, "quiet_write.lua")
QUIET_SHA = hashlib.sha1(QUIET_SCRIPT.encode()).hexdigest()


class ThreadConnection:
    """One thread's connection for its result writes: those that do not wait (STARTED, RECEIVED) go out
    without their answers being read until the next write, and a final state follows them (``call``).

    The scripts run by ``EVALSHA``: the first use of a script on a connection sends its ``SCRIPT
    LOAD`` in the same write, ahead of it, so the source crosses the network once per connection
    instead of with every task (Redis would hash it every time, too). A ``NOSCRIPT`` answer (someone
    ran ``SCRIPT FLUSH``) costs that one write and loads the scripts again with the next."""

    def __init__(self, pool: Any) -> None:
        self.pid = os.getpid()
        self.connection = pool.make_connection()  # outside the pool's limit, never handed to anyone else
        self.owed: list[str] = []  # what each answer still to read is for: "SCRIPT LOAD", "STARTED" ...
        self._loaded: set[str] = set()  # the scripts loaded on this connection's server (by sha)
        self._loaded_on: Any = None  # ... through this socket: a new one starts afresh
        weakref.finalize(self, _close_started, pool, self.connection)  # the thread ended

    def write_script(self, what: str, source: str, sha: str, keys: list[str], arguments: list[Any]) -> None:
        """Run the script ``source`` (whose SHA-1 is ``sha``) without waiting; ``what`` names the write in
        a warning should Redis refuse it."""
        self._ready()
        if self.connection._sock is not self._loaded_on:
            self._loaded_on, self._loaded = self.connection._sock, set()
        commands: list[tuple[Any, ...]] = []
        if sha not in self._loaded:
            commands.append(("SCRIPT", "LOAD", source))
            self.owed.append("SCRIPT LOAD")
            self._loaded.add(sha)
        commands.append(("EVALSHA", sha, len(keys), *keys, *arguments))
        self.owed.append(what)
        self.connection.send_packed_command([resp_many(commands)], check_health=False)

    def call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and wait for their answers (a final state's SET and PUBLISH):
        after the quiet writes before them on the same connection, without redis-py's pipeline object per
        call. They go out before the answers still owed to those writes are read (a no-op task's STARTED
        answer is often still on its way): the PUBLISH a waiting ``get()`` sleeps on leaves a round trip
        sooner. An error answer is raised once every answer is read, so none is left on the connection."""
        if not self.owed or self.connection._sock is None:
            self._ready()  # idle since the last write: Redis may have closed the connection meanwhile
        self.connection.send_packed_command([resp_many(commands)], check_health=False)
        self._settle()  # the quiet writes' answers come first, in order
        answers, refused = [], None
        for _ in commands:
            try:
                answers.append(self.connection.read_response())
            except Exception as exc:
                from redis.exceptions import ResponseError

                if not isinstance(exc, ResponseError):
                    raise
                refused = refused or exc
        if refused is not None:
            raise refused
        return answers

    def _ready(self) -> None:
        """Read the answers owed, and (re)connect when Redis closed the connection meanwhile."""
        self._settle()
        try:  # anything to read now is an EOF (Redis restarted, CLIENT KILL) or worse: start afresh
            stale = self.connection._sock is not None and self.connection.can_read(timeout=0)
        except Exception:
            stale = True
        if stale:
            self.connection.disconnect()
        if self.connection._sock is None:
            self.connection.connect()

    def _settle(self) -> None:
        if self.connection._sock is None:  # closed since (the pool's disconnect() closes it too)
            self.owed = []
        while self.owed:
            what = self.owed.pop(0)
            try:  # long since arrived, normally; a half-open connection gives up, as a pooled write would
                if not self.connection.can_read(timeout=CONNECTION_WAIT):
                    from redis.exceptions import TimeoutError as RedisTimeoutError

                    raise RedisTimeoutError(f"no answer to a {what} write within {CONNECTION_WAIT} s")
                self.connection.read_response()
            except Exception as exc:
                from redis.exceptions import NoScriptError, ResponseError  # here: redis is imported lazily

                if not isinstance(exc, ResponseError):
                    raise
                if isinstance(exc, NoScriptError):
                    self._loaded.clear()  # flushed: load them again with the next write
                logger.warning("Redis refused a %s write (the task is not affected; its state skips it): %s", what, exc)

    def broken(self) -> None:
        """After an error: nothing owed, the next write reconnects."""
        self.owed = []
        self.connection.disconnect()


def _close_started(pool: Any, connection: Any) -> None:
    connection.disconnect()
    try:
        pool._connections.remove(connection)  # make_connection() keeps a list of what it made
    except (AttributeError, ValueError):
        pass


class RedisBackend(ResultBackend):
    """Results as Celery's Redis backend stores them; one client (and connection pool) per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._writers: weakref.WeakSet = weakref.WeakSet()  # live threads' STARTED connections
        self._writers_pid = os.getpid()

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis

            with self._lock:
                if self._client is None:
                    # blocking: a writer past the pool's limit waits for a connection instead of failing with
                    # "Too many connections" -- `-P threads/asyncio -c 500` write results from 500 threads
                    pool = redis.BlockingConnectionPool.from_url(self.url, max_connections=MAX_CONNECTIONS,
                                                                 timeout=CONNECTION_WAIT, health_check_interval=30)
                    self._client = redis.Redis(connection_pool=pool)
        return self._client

    # -- writing ---------------------------------------------------------
    def mark(self, task_id: str, state: str, *, result: Any = None, traceback: str = "",
             request: Any = None, task_name: str = "", runtime: float | None = None) -> None:
        document = encode_meta(task_id, state, result, traceback, request, task_name)
        key = task_key(task_id)
        expires = settings.RESULT_EXPIRES
        writer = self._thread_connection()
        if writer is not None:  # after this thread's quiet writes, in order, and without a pipeline object
            setting = ("SET", key, document, "EX", int(expires)) if expires else ("SET", key, document)
            try:
                writer.call([setting, ("PUBLISH", key, document)])
                return
            except Exception as exc:
                from redis.exceptions import ResponseError  # here, not per task: redis is imported lazily

                if isinstance(exc, ResponseError):
                    raise  # Redis refused the write (out of memory, a replica): as through the pool
                logger.warning("the %s write of task %s failed on this thread's connection; writing it through "
                               "the pool", state, task_id, exc_info=True)
                writer.broken()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(key, document, ex=int(expires) if expires else None)
            pipe.publish(key, document)
            pipe.execute()

    def mark_started(self, task_id: str, *, request: Any = None, task_name: str = "") -> None:
        """STARTED without waiting for Redis before the task runs: a round trip less between a
        message's arrival and its result. The write goes out on a connection this thread keeps for
        it alone, and its reply is read before the thread's next STARTED write: a refusal (out of
        memory, a busy script, a replica) is logged then, one task late, and no reply is ever left
        where another command could read it. The final state's write follows on the same connection
        (:meth:`mark`) and waits, as always; a script keeps a STARTED that reaches Redis after a final
        state written elsewhere (another thread, the pool) from replacing it. Past ``THREAD_CONNECTIONS``
        threads in a process (``-P threads`` with a large ``-c``), or when this thread's connection
        breaks, STARTED is written through the pool and waited for."""
        if not self._write_quietly(TaskState.STARTED, task_id, request, task_name, ("never", *FINAL_STATES)):
            super().mark_started(task_id, request=request, task_name=task_name)

    def mark_received(self, task_id: str, *, request: Any = None, task_name: str = "") -> None:
        """RECEIVED without waiting, as STARTED (:meth:`mark_started`): a worker that receives faster than it
        runs writes one for nearly every task, and waiting for each cost a round trip of the main loop.
        The script writes it only where nothing later is recorded, so a RECEIVED that lands after the
        task's STARTED (a prefork child writes that on its own connection) changes nothing."""
        if not self._write_quietly(TaskState.RECEIVED, task_id, request, task_name, ("only", TaskState.RECEIVED)):
            super().mark_received(task_id, request=request, task_name=task_name)

    def _write_quietly(self, state: str, task_id: str, request: Any, task_name: str, guard: tuple[str, ...]) -> bool:
        """``state``'s document by QUIET_SCRIPT (``guard``: which stored states it may replace) on this thread's
        own connection, without waiting; False when it must go through the pool instead (no connection of
        its own left, or it just broke)."""
        writer = self._thread_connection()
        if writer is None:
            return False
        document = encode_meta(task_id, state, None, "", request, task_name)
        try:
            writer.write_script(state, QUIET_SCRIPT, QUIET_SHA, [task_key(task_id)],
                                [document, int(settings.RESULT_EXPIRES or 0), *guard])
            return True
        except Exception:
            logger.warning("the %s write of task %s could not go out on its own connection (an earlier write "
                           "on it may be lost); writing it through the pool", state, task_id, exc_info=True)
            writer.broken()
            return False

    def _thread_connection(self) -> ThreadConnection | None:
        """This thread's STARTED connection; None when ``THREAD_CONNECTIONS`` live threads have one."""
        held = getattr(self._local, "started", None)
        pid = os.getpid()
        if held is not None and held.pid == pid:
            return held
        pool = self.client.connection_pool  # not under the lock: the client property takes it
        with self._lock:
            if self._writers_pid != pid:  # a forked child counts its own
                self._writers_pid, self._writers = pid, weakref.WeakSet()
            if len(self._writers) >= THREAD_CONNECTIONS:
                return None
            held = ThreadConnection(pool)
            self._writers.add(held)  # leaves the set when its thread ends (the thread's locals go)
        self._local.started = held
        return held

    # -- reading ---------------------------------------------------------
    def meta(self, task_id: str) -> ResultMeta | None:
        return decode_meta(task_id, self.client.get(task_key(task_id)))

    def forget(self, task_id: str) -> None:
        self.client.delete(task_key(task_id))

    def cleanup(self, older_than: datetime) -> int:
        return 0  # keys carry their own expiry (RESULT_EXPIRES)

    def wait(self, task_id: str, timeout: float | None, interval: float) -> ResultMeta:
        """Subscribe, read once, then sleep on the subscription until a ready state arrives.

        The subscription is this thread's, kept from call to call: a new one
        per ``get()`` meant a new connection each time, which cost more than
        the rest of the wait (about 0.6 ms of a 1 ms round trip here).
        Messages and confirmations left from earlier waits are told apart by
        their channel and ignored.
        """
        key = task_key(task_id)
        channel = key.encode()
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self._pubsub()
        try:
            pubsub.subscribe(key)
            found = self.meta(task_id)
            while found is None or not found.ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    state = found.state if found else "PENDING"
                    raise TimeoutError(f"task {task_id} not ready after {timeout}s (state {state})")
                # a bounded wait even without a timeout, so a lost subscription is noticed by a re-read;
                # confirmations are not ignored: redis-py returns None for an ignored one at once, which
                # would look like "nothing arrived within the timeout"
                message = pubsub.get_message(timeout=min(remaining if remaining is not None else 5.0, 5.0))
                if message is None:
                    found = self.meta(task_id)
                elif message.get("type") == "message" and message.get("channel") == channel:
                    found = decode_meta(task_id, message["data"]) or found
            pubsub.unsubscribe(key)  # sent, not waited for: its confirmation is read (and skipped) next time
            return found
        except TimeoutError:
            pubsub.unsubscribe(key)
            raise
        except BaseException:
            self._drop_pubsub()  # a broken connection, or an interrupted wait: the next one starts clean
            raise

    def _pubsub(self) -> Any:
        """This thread's subscription connection (a new one after a fork)."""
        held = getattr(self._local, "pubsub", None)
        if held is None or held[0] != os.getpid():
            held = self._local.pubsub = (os.getpid(), self.client.pubsub())
        return held[1]

    def _drop_pubsub(self) -> None:
        held, self._local.pubsub = getattr(self._local, "pubsub", None), None
        if held is not None and held[0] == os.getpid():
            try:
                held[1].close()
            except Exception:
                pass

    # -- groups (GroupResult.save / restore) -----------------------------
    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        """Celery's layout (``celery_meta.encode_group``)."""
        expires = settings.RESULT_EXPIRES
        self.client.set(group_key(group_id), encode_group(group_id, task_ids), ex=int(expires) if expires else None)

    def restore_group(self, group_id: str) -> list[str] | None:
        raw = self.client.get(group_key(group_id))
        return None if raw is None else decode_group(raw)

    def delete_group(self, group_id: str) -> None:
        self.client.delete(group_key(group_id))

    # -- chords on Celery's chord keys (results/redis_chords.py) ---------
    counts_chords = True

    def start_chord(self, group_id: str, body: dict, result_ids: list[str]) -> None:
        """Write the header size: the body travels in each member's ``embed["chord"]``, as Celery's does."""
        from . import redis_chords

        redis_chords.start_chord(self, group_id, len(result_ids))

    def on_chord_part_return(self, message: TaskMessage, state: str, retval: Any) -> None:
        from . import redis_chords

        redis_chords.on_chord_part_return(message, state, retval, self)

