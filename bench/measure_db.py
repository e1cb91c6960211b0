"""The measurements that involve a database: results in the ORM, the ``django://`` broker, and scale.

- :func:`drain_with_results` (row ``pgresults``): the drain row on Redis, but
  every no-op's result is written to PostgreSQL -- ours through its default
  ``"django"`` result backend, Celery through django-celery-results.
- :func:`drain_embedded` (row ``django2``): two worker processes on the
  ``django://`` broker, on PostgreSQL or SQLite; also counts "database is
  locked" in the workers' logs.
- :func:`scale` (row ``scale``): the cost of enqueueing and draining with a
  few or a great many tasks queued.
- :func:`parked_release` (row ``scale`` too): the cost of releasing and
  running a window of parked eta tasks that came due, with a few or a great
  many others parked that are not due.

Every function times the drain as ``measure.drain`` does: from the start
marker task to the end marker task, worker CPU read from ``/proc`` at both
(``parked_release`` reads the CPU from before the release instead).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.workers import ROOT, Worker, client, cpu_seconds, environment, new_marker, worker_command
from django_tasks_q.broker.delayed import REDIS_KEY, RELEASE_LEAD

RESULT_TABLES = {"ours": "django_tasks_q_taskresult", "celery-django": "django_celery_results_taskresult"}
BROKER_TABLE = "django_tasks_q_brokermessage"
#: The message a worker logs when SQLite refused it the write lock for longer than its timeout.
LOCKED = "database is locked"


@dataclass
class Database:
    """A database the workers use (``env``, read by ``testproject/settings.py``) and the bench reads with SQL."""

    label: str  # "PostgreSQL" or "SQLite"
    url: str | None = None  # postgres://...
    path: str | None = None  # an SQLite file
    server_pid: int | None = None  # PostgreSQL's postmaster, whose CPU (with its backends') is shown too
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {"TESTPROJECT_DATABASE_URL": self.url} if self.url else {"TESTPROJECT_SQLITE": self.path}

    def migrate(self, settings_module: str = "testproject.settings") -> None:
        env = {**environment_without_database(), **self.env, "DJANGO_SETTINGS_MODULE": settings_module,
               "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=env)

    def execute(self, sql: str) -> list[tuple]:
        """Run one statement in its own transaction; the rows it returned, if any."""
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                cursor = conn.execute(sql)
                return cursor.fetchall() if cursor.description else []
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as conn, conn:
            return conn.execute(sql).fetchall()

    def clear(self, *tables: str) -> None:
        for table in tables:
            self.execute(f"DELETE FROM {table}")

    def count(self, table: str) -> int:
        return self.execute(f"SELECT COUNT(*) FROM {table}")[0][0]


def environment_without_database() -> dict[str, str]:
    """This process's environment less the variables that choose the testproject's database."""
    return {key: value for key, value in os.environ.items()
            if key not in ("TESTPROJECT_DATABASE_URL", "TESTPROJECT_SQLITE")}


def wait_for(workers: list[Worker], marker: Path, timeout: float = 1800) -> float:
    """The ``perf_counter()`` at which ``marker`` appeared (it is removed); fails if any worker exits first."""
    deadline = time.perf_counter() + timeout
    while not marker.exists():
        for worker in workers:
            if worker.proc.poll() is not None and not marker.exists():
                raise SystemExit(f"worker exited ({worker.proc.returncode}) before the marker ran: {worker.tail()}")
        if time.perf_counter() > deadline:
            raise SystemExit("workers stalled: " + "\n".join(worker.tail() for worker in workers))
        time.sleep(0.002)
    seen = time.perf_counter()
    marker.unlink()
    return seen


@dataclass
class Drain:
    """What one timed drain measured between its markers."""

    seconds: float
    cpu: float  # the workers' CPU seconds
    server_cpu: float | None  # the database server's, when it is PostgreSQL
    logs: str  # everything the workers printed

    def figures(self, tasks: int) -> dict[str, float]:
        figures = {"rate": tasks / self.seconds, "cpu_ms": 1000 * self.cpu / tasks}
        if self.server_cpu is not None:
            figures["db_cpu_ms"] = 1000 * self.server_cpu / tasks
        return figures


def timed_drain(commands: list[list[str]], env: dict[str, str], start: Path, end: Path,
                database: Database | None = None, gate: Callable[[], object] | None = None,
                server: int | None = None) -> Drain:
    """Start the workers together on a filled queue and time them from the start marker to the end marker.

    ``gate``: called once they are started, to let them all consume; it runs in a thread while the
    start marker is watched for, since the first worker told may take it before the call returns.
    ``server``: the pid of a server whose CPU to read too (default: ``database``'s).
    """
    server = server or (database.server_pid if database else None)
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(Worker(command, env)) for command in commands]
        opened: list[BaseException] = []
        opener = threading.Thread(target=_run_gate, args=(gate, opened), daemon=True) if gate else None
        if opener is not None:
            opener.start()
        began = wait_for(workers, start)
        began_cpu = sum(worker.cpu_seconds() for worker in workers)
        began_server = cpu_seconds(server) if server else 0.0
        ended = wait_for(workers, end)
        cpu = sum(worker.cpu_seconds() for worker in workers) - began_cpu
        server_cpu = cpu_seconds(server) - began_server if server else None
        logs = "".join(worker.log_text() for worker in workers)
        if opener is not None:
            opener.join()
            if opened:
                raise SystemExit(f"the gate did not open: {opened[0]}")
    return Drain(ended - began, cpu, server_cpu, logs)


def _run_gate(gate: Callable[[], object], failures: list[BaseException]) -> None:
    try:
        gate()
    except BaseException as exc:  # SystemExit from bench.workers.client included: reported by the caller
        failures.append(exc)


def drain_with_results(system: str, redis_url: str, n: int, database: Database) -> dict:
    """The drain row on Redis with every no-op's result stored in ``database`` (``-P solo``).

    ``stored`` counts the result rows the drain left, to show that each task wrote one.
    """
    extra = dict(database.env)
    if system == "celery-django":
        extra["DJANGO_SETTINGS_MODULE"] = "bench.peers.celery_django_settings"
    database.clear(*RESULT_TABLES.values())
    env = environment(redis_url, **extra)
    start, end = new_marker(), new_marker()
    sent = client(system, env, "fill", n, start, end, "results")
    drain = timed_drain([worker_command(system, redis_url)], env, start, end, database)
    return {**drain.figures(n + 2), "enqueue_rate": n / sent["seconds"],
            "stored": database.count(RESULT_TABLES[system])}


def drain_embedded(n: int, database: Database, two_solo: bool) -> dict:
    """Ours on the ``django://`` broker in ``database``, two processes, no results stored.

    ``two_solo``: two ``-P solo`` workers side by side, else one ``-P prefork -c 2``.
    The queue is filled with the bulk API first (``locked`` counts "database is locked" in the logs).
    """
    broker = "django://"
    database.clear(BROKER_TABLE)
    env = environment(broker, **database.env)
    start, end = new_marker(), new_marker()
    sent = client("ours", env, "bulkfill", n, start, end)
    if two_solo:
        commands = [worker_command("ours", broker, name=f"bench{index}") for index in (1, 2)]
    else:
        commands = [worker_command("ours", broker, "prefork", 2)]
    drain = timed_drain(commands, env, start, end, database)
    return {**drain.figures(n + 2), "fill_rate": sent["sent"] / sent["seconds"], "locked": drain.logs.count(LOCKED)}


def scale(broker_url: str, window: int, behind: int, sends: int, database: Database | None = None,
          shallow_queue: str | None = None) -> dict:
    """Cost per task with ``behind`` tasks queued behind the ``window`` that is timed.

    The queue is filled with the bulk API: a start marker, ``window`` + 1
    no-ops, an end marker, then ``behind`` more no-ops, so the queue never
    holds fewer than ``behind`` while the window drains. Then ``sends``
    ``delay()`` calls are timed one by one (``enqueue_us`` per call), and one
    ``-P solo`` worker drains the window (``ms_per_task`` wall, ``cpu_ms``).
    ``database``: the one a ``django://`` broker keeps its messages in; after the fill it is vacuumed,
    analyzed and checkpointed, so that the drain measures a queue that holds its backlog, not the
    background work a fresh fill of 200 MB sets off (the parked-release row does not: it tests that the
    claim does not need statistics).

    ``shallow_queue`` (Redis, where each queue is a list of its own): the
    ``delay()`` calls alternate, in blocks of 100, between the full queue and
    this nearly empty one, so the two costs come from the same moments of a
    noisy machine; ``enqueue_pair_ratio`` is full / nearly empty.
    """
    extra = database.env if database else {}
    if database:
        database.clear(BROKER_TABLE)
    env = environment(broker_url, **extra)
    start, end = new_marker(), new_marker()
    try:
        filled = client("ours", env, "bulkfill", window, start, end, behind)
        if database:  # a queue that has held its backlog a while, not one filled 30 s ago: without this the drain
            database.execute(f"VACUUM (ANALYZE) {BROKER_TABLE}")  # pays for the fresh fill's autovacuum and
            database.execute("CHECKPOINT")  # checkpoint (1.34x CPU per task at 200,000; 0.88x with it)
        if shallow_queue:
            sent = client("ours", env, "enqueue-pair", sends, shallow_queue)
        else:
            sent = client("ours", env, "enqueue", sends, "quiet")
        drain = timed_drain([worker_command("ours", broker_url)], env, start, end, database,
                            server=None if database else redis_pid(broker_url))
    finally:
        if database:
            database.clear(BROKER_TABLE)
    tasks = window + 2
    pair = {"enqueue_pair_ratio": sent["seconds"] / sent["seconds_other"]} if shallow_queue else {}
    figures = drain.figures(tasks)
    if "db_cpu_ms" in figures:  # Redis's or PostgreSQL's: named as in the scale-eta rows
        figures["server_cpu_ms"] = figures.pop("db_cpu_ms")
    return {**pair, "queued": behind, "ms_per_task": 1000 * drain.seconds / tasks, **figures,
            "enqueue_us": 1e6 * sent["seconds"] / sends, "fill_rate": filled["sent"] / filled["seconds"]}


#: Seconds between the window's last send and the earliest moment its release can begin
#: (``RELEASE_LEAD`` before it is due): time to read the CPU before anything is released.
WINDOW_SLACK = 1.5
#: Window tasks the bench assumes a client parks per second at worst, to choose how far ahead they are due.
WINDOW_SEND_RATE = 1500


def parked_release(broker_url: str, window: int, parked: int, database: Database | None = None) -> dict:
    """Cost per task of releasing and running ``window`` parked tasks that came due, with ``parked``
    other tasks parked a day ahead (in the same sorted set on Redis, the same partial index on
    ``django://``).

    One ``-P solo`` worker runs throughout, so the window is released by its
    own once-a-second release (``RELEASE_LEAD`` seconds early, then held in
    memory until due, as in production):

    1. the backlog is parked (``park-backlog``) and the worker started; a
       marker task that is not parked tells that it is up;
    2. a start marker, ``window`` no-ops and an end marker are parked until a
       few seconds ahead (``park-window``), and the CPU of the worker and of
       the broker's server is read before any of them can be released;
    3. ``ms_per_task``: wall time from the start marker (due first) to the
       end marker (due last); ``cpu_ms`` (worker) and ``server_cpu_ms`` (Redis
       or PostgreSQL, which run the release): CPU from step 2 to the end
       marker, so the release, the intake and the run all count;
    4. checks: the worker ran exactly the window and the three markers
       (``ran`` counts the window), and the backlog is still parked.

    ``start_late_ms``: how long after its due time the start marker ran.
    """
    extra = database.env if database else {}
    env = environment(broker_url, **extra)
    server = database.server_pid if database else redis_pid(broker_url)
    hostname = f"parked{os.getpid()}"
    if database:  # TRUNCATE, not DELETE: the pages of an earlier, larger fill would sway the planner
        database.execute(f"TRUNCATE {BROKER_TABLE}")
    ready, start, end = new_marker(), new_marker(), new_marker()
    try:
        filled = client("ours", env, "park-backlog", parked, ready)
        # no ANALYZE after the fill: the claim must not depend on statistics autovacuum has not gathered yet
        with Worker(worker_command("ours", broker_url, name=hostname), env) as worker:
            wait_for([worker], ready)
            lead = RELEASE_LEAD + WINDOW_SLACK + window / WINDOW_SEND_RATE
            sent = client("ours", {**env, "TASKS_Q_ETA_HOLD_MAX": "1"}, "park-window", window, start, end, lead)
            if time.time() > sent["due"] - RELEASE_LEAD - 0.2:
                raise SystemExit(f"the window took {sent['seconds']:.1f} s to park, too close to its due time "
                                 f"({lead:.1f} s after it began): lower WINDOW_SEND_RATE")
            began_cpu, began_server = worker.cpu_seconds(), cpu_seconds(server)
            began = wait_for([worker], start)
            late = time.time() - sent["due"]
            ended = wait_for([worker], end)
            cpu, server_cpu = worker.cpu_seconds() - began_cpu, cpu_seconds(server) - began_server
        ran = client("ours", env, "processed", f"{hostname}@{socket.gethostname()}")["processed"] - 3
        still_parked = count_parked(broker_url, database)
    finally:
        if database:
            database.execute(f"TRUNCATE {BROKER_TABLE}")
    if ran != window or still_parked != parked:
        raise SystemExit(f"the worker ran {ran} of the {window} tasks released; {still_parked:,} of the "
                         f"{parked:,} backlog are still parked")
    tasks = window + 2
    return {"queued": parked, "rate": tasks / (ended - began), "ms_per_task": 1000 * (ended - began) / tasks,
            "cpu_ms": 1000 * cpu / tasks, "server_cpu_ms": 1000 * server_cpu / tasks, "start_late_ms": 1000 * late,
            "ran": ran, "fill_rate": parked / filled["seconds"], "park_rate": window / sent["seconds"]}


def redis_pid(url: str) -> int:
    """The process id of the Redis server at ``url`` (a private one the bench started)."""
    import redis

    return int(redis.Redis.from_url(url).info("server")["process_id"])


def count_parked(broker_url: str, database: Database | None) -> int:
    """Messages parked in the broker (not yet released)."""
    if database:
        return database.execute(f"SELECT COUNT(*) FROM {BROKER_TABLE} WHERE visible_at IS NOT NULL")[0][0]
    import redis

    return int(redis.Redis.from_url(broker_url).zcard(REDIS_KEY))
