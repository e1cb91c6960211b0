"""The sending side of every measurement, run as a subprocess of ``bench/run.py``.

    python -m bench.clients SYSTEM ACTION [N] [PATH]

Each call runs in a fresh interpreter so that the systems never share a
process (Celery and django-tasks-q both read ``DJANGO_SETTINGS_MODULE``-style
globals) and each sees only the environment ``bench/systems.py`` gave it.
Imports and the first connection happen before the clock starts; the last
line of stdout is a JSON object with the timed figures.

Actions: ``enqueue N [quiet] [commands]`` (N single sends; ``quiet``: the
drain rows' send, no result stored; ``commands``: also count the commands
Redis ran for the timed sends, from ``INFO commandstats`` after a ``CONFIG
RESETSTAT`` that follows the untimed first send), ``fill N START END
[results] [incr]`` (a marker task that writes START, N + 1 sends as the
drain rows want them -- or, with ``results``, sends whose results are
stored; with ``incr``, of the ``incr`` task instead of the no-op -- then a
marker task that writes END), ``bulkfill N START END [BEHIND]`` (the same layout sent with
the bulk API in chunks, then BEHIND more no-ops after the END marker),
``enqueue-pair N QUEUE`` (N sends to the default queue and N to QUEUE,
alternating in blocks of 100, each side timed apart), ``bulk N`` (one
bulk call of N tasks), ``on_commit N`` (ours: N ``delay_on_commit()`` in
one transaction, committed), ``marker PATH``, ``roundtrip N`` (N send-then-wait
latencies, after 20 untimed ones).

For the scale row's parked (eta) tasks: ``park-backlog N READY`` (N no-ops
parked a day ahead, then a marker task writing READY, not parked),
``park-window N START END LEAD`` (a start marker, N no-ops and an end
marker, all parked until LEAD seconds from now; prints that due time),
``processed HOSTNAME`` (how many tasks the worker of that name ran, from the
heartbeat row it writes when it stops); ``open-gate QUEUE NAME...`` (ours:
once the named workers answer a ping, they all start consuming QUEUE).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 20


@dataclass
class Client:
    """What one library offers the benchmark; ``None`` where a row does not use it."""

    send: Callable[[], object]
    marker: Callable[[str], object]
    send_quiet: Callable[[], object] | None = None  # the drain rows' send, when it differs from ``send``
    bulk: Callable[[int], Callable[[], object]] | None = None  # N -> the timed call, built beforehand
    roundtrip: Callable[[], object] | None = None
    bulk_quiet: Callable[[int], object] | None = None  # send N no-ops now, results not stored (bulkfill)
    send_to: Callable[[str], object] | None = None  # the drain rows' send, to the queue named (enqueue-pair)
    incr: Callable[[], object] | None = None  # send the incr task (one Redis INCR), result stored (prefork2)
    on_commit: Callable[[int], object] | None = None  # N delay_on_commit() in one transaction (amqp_confirms)


def ours() -> Client:
    import django

    django.setup()
    from django.apps import apps

    from testproject.videos.tasks import add, noop, touch

    incr = None
    if apps.is_installed("bench.ours_app"):  # bench/ours_settings.py (the prefork2 row)
        from bench.ours_app.tasks import incr
    return Client(
        send=noop.delay,
        send_quiet=lambda: noop.apply_async(ignore_result=True),
        marker=touch.delay,
        bulk=lambda n: (lambda calls=[()] * n: noop.delay_many(calls)),
        roundtrip=lambda: add.delay(1, 2).get(timeout=30),
        bulk_quiet=lambda n: noop.apply_async_many([((), None)] * n, ignore_result=True),
        send_to=lambda queue: noop.apply_async(ignore_result=True, queue=queue),
        incr=incr.delay if incr is not None else None,
        on_commit=lambda n: _on_commit(noop, n),
    )


def _on_commit(task: object, n: int) -> None:
    """``n`` ``delay_on_commit()`` calls in one transaction, committed (they go out after the commit)."""
    from django.db import transaction

    with transaction.atomic():
        for _ in range(n):
            task.delay_on_commit()  # type: ignore[attr-defined]


def celery() -> Client:
    from celery import group

    from bench.celery_app import add, incr, noop, touch

    def bulk(n: int) -> Callable[[], object]:
        tasks = group([noop.s() for _ in range(n)])
        return tasks.apply_async

    return Client(send=noop.delay, marker=touch.delay, bulk=bulk,
                  roundtrip=lambda: add.delay(1, 2).get(timeout=30), incr=incr.delay)


def celery_django() -> Client:
    """Celery storing every result through django-celery-results (the ``pgresults`` row)."""
    from bench.peers.celery_django_app import noop, touch

    return Client(send=noop.delay, marker=touch.delay)


def celery_site() -> Client:
    """Celery in a Django site with the ``django.contrib`` apps (the ``rss`` row)."""
    from bench.peers.celery_site_app import noop, touch

    return Client(send=noop.delay, marker=touch.delay)


def huey() -> Client:
    from bench.peers.huey_app import add, incr, noop, touch

    return Client(send=noop, marker=touch, roundtrip=lambda: add(1, 2).get(blocking=True, timeout=30), incr=incr)


def rq() -> Client:
    import os

    from redis import Redis
    from rq import Queue

    from bench.peers.rq_tasks import noop, touch

    queue = Queue(connection=Redis.from_url(os.environ["BENCH_BROKER_URL"]))

    def bulk(n: int) -> Callable[[], object]:
        jobs = [Queue.prepare_data(noop) for _ in range(n)]
        return lambda: queue.enqueue_many(jobs)

    return Client(send=lambda: queue.enqueue(noop), marker=lambda path: queue.enqueue(touch, path), bulk=bulk)


def dramatiq() -> Client:
    from bench.peers.dramatiq_app import add, noop, touch

    return Client(send=noop.send, marker=touch.send,
                  roundtrip=lambda: add.send(1, 2).get_result(block=True, timeout=30000))


CLIENTS = {"ours": ours, "celery": celery, "celery-plain": celery, "celery-django": celery_django,
           "celery-site": celery_site, "huey": huey, "rq": rq, "dramatiq": dramatiq}

#: Tasks per bulk call when filling: one call of a million would hold every message in memory at once.
CHUNK = 20000
#: Sends in a row to one queue before ``enqueue-pair`` turns to the other: the machine's slow spells fall on both.
PAIR_BLOCK = 100


#: Seconds ahead the backlog of ``park-backlog`` is parked: it must not come due while the row runs.
BACKLOG_AHEAD = 86400
#: The markers of ``park-window`` are due this much before and after the window, so they run first and last.
MARKER_OFFSET = 0.001


def park_backlog(n: int) -> int:
    """Park ``n`` no-ops a day ahead: one sent through the library, then copied in the broker's own store.

    Parked messages are sent one by one (``publish_many`` sends no parked
    batch), so a million would take minutes to send; copying the one the
    library wrote, with a fresh task id and delivery tag in each copy, fills
    the Redis sorted set or the ``django://`` table in seconds with messages
    that look the same to the release path. Returns how many are parked.
    """
    from django_tasks_q.conf import settings
    from testproject.videos.tasks import noop

    noop.apply_async(countdown=BACKLOG_AHEAD, ignore_result=True)
    if n <= 1:
        return n
    if settings.BROKER_URL.startswith("django://"):
        return _copy_parked_rows(n - 1) + 1
    return _copy_parked_members(settings.BROKER_URL, n - 1) + 1


def _copy_parked_members(url: str, copies: int) -> int:
    """Redis: ``copies`` copies of the one parked member, same score, ZADDed a thousand per command."""
    import json as jsonlib

    import redis

    from django_tasks_q.broker.delayed import REDIS_KEY

    client = redis.Redis.from_url(url)
    [(member, score)] = client.zrange(REDIS_KEY, 0, 0, withscores=True)
    text = member.decode()
    message = jsonlib.loads(text.split("\n", 1)[1])
    task_id, tag = message["headers"]["id"], message["properties"]["delivery_tag"]
    pipe = client.pipeline(transaction=False)
    for first in range(0, copies, CHUNK):
        for start in range(first, min(first + CHUNK, copies), 1000):
            members = {}
            for index in range(start, min(start + 1000, first + CHUNK, copies)):
                unique = f"{index:08x}"  # a uuid's first group: ids stay unique and uuid-shaped
                members[text.replace(task_id, unique + task_id[8:]).replace(tag, unique + tag[8:])] = score
            pipe.zadd(REDIS_KEY, members)
        pipe.execute()
    return client.zcard(REDIS_KEY) - 1


def _copy_parked_rows(copies: int) -> int:
    """``django://``: ``copies`` copies of the one parked row in one ``INSERT ... SELECT``."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_tasks_q_brokermessage"
            " (queue, payload, priority, delivery_tag, visible_at, reserved_until, delivery_count, created_at)"
            " SELECT queue, replace(payload, delivery_tag, tag), priority, tag, visible_at, NULL, 0, created_at"
            " FROM (SELECT * FROM django_tasks_q_brokermessage ORDER BY id LIMIT 1) AS template,"
            " LATERAL (SELECT lpad(to_hex(copy), 8, '0') || substr(template.delivery_tag, 9) AS tag"
            "          FROM generate_series(1, %s) AS copy) AS tags", [copies])
        return cursor.rowcount


def park_window(n: int, start: str, end: str, lead: float) -> float:
    """A start marker, ``n`` no-ops and an end marker parked until ``lead`` seconds from now; the due time.

    The markers are due a millisecond before and after the no-ops, so that a
    worker runs them first and last. The no-ops go in bulk calls of
    ``CHUNK`` (one transaction each on ``django://``).
    """
    from datetime import datetime, timedelta, timezone

    from testproject.videos.tasks import noop, touch

    due = time.time() + lead
    at = datetime.fromtimestamp(due, tz=timezone.utc)
    touch.apply_async((start,), eta=at - timedelta(seconds=MARKER_OFFSET))
    bulk_in_chunks(lambda size: noop.apply_async_many([((), None)] * size, ignore_result=True, eta=at), n)
    touch.apply_async((end,), eta=at + timedelta(seconds=MARKER_OFFSET))
    return due


def worker_processed(hostname: str) -> int:
    """The tasks the worker ``hostname`` ran, as its last heartbeat row says (written again when it stops)."""
    from django_tasks_q.models import Worker

    return Worker.objects.get(hostname=hostname).processed


def timed(call: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - started


def bulk_in_chunks(send_many: Callable[[int], object], n: int) -> int:
    """Send ``n`` no-ops in bulk calls of ``CHUNK``; on the ``django://`` broker each call is one transaction,
    so that the fill costs one commit per chunk rather than one per task (the fill is not what is timed)."""
    from django.db import transaction

    from django_tasks_q.conf import settings

    embedded = settings.BROKER_URL.startswith("django://")
    for first in range(0, n, CHUNK):
        with transaction.atomic() if embedded else contextlib.nullcontext():
            send_many(min(CHUNK, n - first))
    return n


def open_gate(queue: str, names: list[str], timeout: float = 120.0) -> dict:
    """Wait until each named worker of ours answers a ping, then have all of them consume ``queue``.
    (They keep consuming the empty gate queue too: ten more empty lists per take, about 2 us of
    Lua; cancelling it would be a broadcast for the workers to handle inside the timed drain.)"""
    from django_tasks_q.inspection import broadcast

    destination = [f"{name}@%h" for name in names]
    deadline = time.monotonic() + timeout
    while (silent := broadcast("ping", {}, destination, timeout=1.0).silent):
        if time.monotonic() > deadline:
            raise SystemExit(f"workers {silent} did not answer a ping within {timeout:.0f}s")
    told = broadcast("add_consumer", {"queue": queue}, destination, timeout=10.0)
    if told.silent:
        raise SystemExit(f"workers {told.silent} did not start consuming {queue!r}")
    return {"answers": told.answers}


def command_counts(stats: object) -> dict[str, int]:
    """Calls per command from Redis's ``INFO commandstats`` (since the last ``CONFIG RESETSTAT``), less the
    ``CONFIG`` and ``INFO`` calls that reset and read them. ``stats``: a redis-py client that has already
    connected (its connection's handshake came before the reset)."""
    counts = stats.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(figures["calls"]) for name, figures in counts.items()
            if not name.removeprefix("cmdstat_").startswith(("config", "info"))}


def main(argv: list[str]) -> dict:
    system, action, *rest = argv
    client = CLIENTS[system]()
    if action == "marker":
        client.marker(rest[0])
        return {}
    if action == "processed":
        return {"processed": worker_processed(rest[0])}
    if action == "open-gate":
        return open_gate(rest[0], rest[1:])
    n = int(rest[0])
    if action == "enqueue":
        flags = set(rest[1:])
        send = (client.send_quiet or client.send) if "quiet" in flags else client.send
        send()  # opens the connection, untimed
        if "commands" not in flags:
            return {"seconds": timed(send, n)}
        import os

        import redis

        stats = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
        stats.config_resetstat()  # on one connection, opened here: its handshake is not counted
        seconds = timed(send, n)
        return {"seconds": seconds, "commands": command_counts(stats)}
    if action == "fill":
        flags = set(rest[3:])
        send = client.send if "results" in flags else (client.send_quiet or client.send)
        if "incr" in flags:
            if client.incr is None:
                raise SystemExit(f"{system} has no incr task here (ours: DJANGO_SETTINGS_MODULE=bench.ours_settings)")
            send = client.incr
        client.marker(rest[1])  # the start marker (opens the connection, untimed)
        send()  # untimed, like every first send
        seconds = timed(send, n)
        client.marker(rest[2])  # the end marker
        return {"seconds": seconds}
    if action == "enqueue-pair":
        default, other = lambda: client.send_to("default"), lambda: client.send_to(rest[1])
        default(), other()  # untimed: the first send to each queue declares it
        totals = {"seconds": 0.0, "seconds_other": 0.0}
        for first in range(0, n, PAIR_BLOCK):
            block = min(PAIR_BLOCK, n - first)
            totals["seconds"] += timed(default, block)
            totals["seconds_other"] += timed(other, block)
        return totals
    if action == "bulkfill":
        client.marker(rest[1])  # the start marker (opens the connection, untimed)
        started = time.perf_counter()
        sent = bulk_in_chunks(client.bulk_quiet, n + 1)
        client.marker(rest[2])
        sent += bulk_in_chunks(client.bulk_quiet, int(rest[3]) if len(rest) > 3 else 0)
        return {"seconds": time.perf_counter() - started, "sent": sent}
    if action == "park-backlog":
        started = time.perf_counter()
        parked = park_backlog(n)
        client.marker(rest[1])
        return {"seconds": time.perf_counter() - started, "parked": parked}
    if action == "park-window":
        started = time.perf_counter()
        due = park_window(n, rest[1], rest[2], float(rest[3]))
        return {"seconds": time.perf_counter() - started, "due": due}
    if action == "bulk":
        client.send()  # opens the connection, untimed
        call = client.bulk(n)
        started = time.perf_counter()
        call()
        return {"seconds": time.perf_counter() - started}
    if action == "on_commit":
        client.send()  # opens the connection, untimed
        started = time.perf_counter()
        client.on_commit(n)
        return {"seconds": time.perf_counter() - started}
    if action == "roundtrip":
        for _ in range(WARMUP):
            client.roundtrip()
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            client.roundtrip()
            latencies.append(time.perf_counter() - started)
        return {"latencies": latencies}
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(main(sys.argv[1:])))
