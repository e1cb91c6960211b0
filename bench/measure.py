"""One measurement of one system: drain, enqueue, bulk enqueue, round trip, idle memory.

Every function starts from an empty broker (``run.py`` flushes Redis between
calls; a RabbitMQ queue is empty after its drain) and returns a dict of
figures for one run. ``run.py`` takes the medians over runs.
"""

from __future__ import annotations

import math
import statistics
import time

from bench.workers import Worker, client, environment, new_marker, worker_command

#: Seconds an idle worker is left alone before its memory is read.
IDLE_SETTLE = 2.0
#: The empty queue two workers start on before they are told to consume the filled one together.
GATE_QUEUE = "benchgate"


def drain(system: str, broker_url: str, n: int, pool: str = "solo", concurrency: int = 1) -> dict:
    """Tasks per second a worker runs from a full queue, and its CPU milliseconds per task.

    The queue holds a start marker task, N + 1 no-ops and an end marker; the
    worker is started, and the clock and the worker's CPU seconds are read
    when the start marker's file appears and again when the end marker's
    does. Every worker here takes the queue in order, so what lies between is
    the N + 2 tasks after the start marker, and the worker's start-up (which
    varies by a second or more from one start to the next) is left out.
    """
    env = environment(broker_url)
    start, end = new_marker(), new_marker()
    sent = client(system, env, "fill", n, start, end)
    with Worker(worker_command(system, broker_url, pool, concurrency), env) as worker:
        began = worker.wait_for(start)
        began_cpu = worker.cpu_seconds()
        ended = worker.wait_for(end)
        cpu = worker.cpu_seconds() - began_cpu
    tasks = n + 2
    return {"rate": tasks / (ended - began), "cpu_ms": 1000 * cpu / tasks, "enqueue_rate": n / sent["seconds"]}


def drain_two_solo(broker_url: str, n: int) -> dict:
    """The drain row with two ``-P solo`` workers of ours side by side (two processes on two CPUs),
    the queue filled as :func:`drain` fills it, timed between the markers, CPU summed over both.

    Both workers start on an empty gate queue and are told to consume the filled one (remote
    control ``add_consumer``) once both answer a ping. Started straight on the filled queue, the
    first worker up ran alone until the second had started -- a second or more of start-up that
    varies from one start to the next, inside a drain of one or two seconds -- while the
    one-process row leaves start-up out.
    """
    from bench.measure_db import timed_drain

    env = environment(broker_url)
    start, end = new_marker(), new_marker()
    sent = client("ours", env, "fill", n, start, end)
    names = [f"bench{index}" for index in (1, 2)]
    commands = [worker_command("ours", broker_url, name=name, queue=GATE_QUEUE) for name in names]
    drain = timed_drain(commands, env, start, end, gate=lambda: client("ours", env, "open-gate", "default", *names))
    return {**drain.figures(n + 2), "enqueue_rate": n / sent["seconds"]}


def enqueue(system: str, broker_url: str, n: int) -> dict:
    """Tasks per second sent one call at a time (``delay()`` or the library's equivalent), and the Redis
    commands per task those sends made (``INFO commandstats``, reset after the untimed first send)."""
    sent = client(system, environment(broker_url), "enqueue", n, "commands")
    commands = sent["commands"]
    shown = ", ".join(f"{name} {calls / n:.3f}" for name, calls in sorted(commands.items()))
    print(f"  {'enqueue':<9} {system:<16} commands per task: {shown}", flush=True)
    return {"rate": n / sent["seconds"], "commands_per_task": sum(commands.values()) / n}


def bulk(system: str, broker_url: str, n: int) -> dict:
    """Tasks per second sent by the library's bulk call, N tasks in one call."""
    return {"rate": n / client(system, environment(broker_url), "bulk", n)["seconds"]}


def roundtrip(system: str, broker_url: str, result_url: str, n: int, pool: str = "solo", concurrency: int = 1,
              **extra: str) -> dict:
    """p50 and p99 milliseconds from ``delay()`` to ``get()`` returning, one idle worker, Redis results
    (``pool``/``concurrency``: ours' and Celery's pool; the row runs ours on ``-P solo`` and on the default
    ``-P prefork -c 2``)."""
    env = environment(broker_url, result_url, **extra)
    marker = new_marker()
    client(system, env, "marker", marker)
    with Worker(worker_command(system, broker_url, pool, concurrency), env) as worker:
        worker.wait_for(marker)  # started and idle
        latencies = sorted(client(system, env, "roundtrip", n)["latencies"])
    return {"p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[math.ceil(0.99 * len(latencies)) - 1]}


def drain_stored(system: str, broker_url: str, result_url: str, counter_url: str, n: int, task: str,
                 pool: str = "solo", concurrency: int = 1) -> dict:
    """The ``prefork2`` row: :func:`drain` with every task's result stored in Redis (``result_url``), and
    ``task`` either ``noop`` or ``incr`` (one ``INCR`` on the counter server at ``counter_url``).

    Ours runs with ``bench/ours_settings.py`` (the testproject's settings plus the app holding ``incr``), in
    both variants. ``counted`` is the counter after the end marker ran (up to a second later, for a
    task still running in the other process): N + 1 when every ``incr`` ran once.
    """
    import redis

    from bench import counter

    extra = {"BENCH_COUNTER_URL": counter_url}
    if system == "ours":
        extra["DJANGO_SETTINGS_MODULE"] = "bench.ours_settings"
    env = environment(broker_url, result_url, **extra)
    redis.Redis.from_url(counter_url).flushall()
    start, end = new_marker(), new_marker()
    flags = ["results", "incr"] if task == "incr" else ["results"]
    sent = client(system, env, "fill", n, start, end, *flags)
    with Worker(worker_command(system, broker_url, pool, concurrency), env) as worker:
        began = worker.wait_for(start)
        began_cpu = worker.cpu_seconds()
        ended = worker.wait_for(end)
        cpu = worker.cpu_seconds() - began_cpu
        counted = counter.read(counter_url)
        deadline = time.monotonic() + 1.0
        while task == "incr" and counted < n + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
            counted = counter.read(counter_url)
    tasks = n + 2
    figures = {"rate": tasks / (ended - began), "cpu_ms": 1000 * cpu / tasks, "enqueue_rate": n / sent["seconds"]}
    if task == "incr":
        figures["counted"] = counted
    return figures


def idle_memory(system: str, broker_url: str, pool: str, concurrency: int) -> dict:
    """RSS and PSS (MiB) of an idle worker and all its processes, after it has run one task.

    ``celery-plain`` is ``bench/celery_app.py`` without ``DJANGO_SETTINGS_MODULE``: with it set (as the
    bench sets it for everyone), Celery's Django fix-up runs ``django.setup()`` with the testproject's
    settings in the worker, which the ``celery`` system has always measured.
    """
    env = environment(broker_url)
    if system == "celery-plain":
        env.pop("DJANGO_SETTINGS_MODULE")
    marker = new_marker()
    client(system, env, "marker", marker)
    with Worker(worker_command(system, broker_url, pool, concurrency), env) as worker:
        worker.wait_for(marker)
        time.sleep(IDLE_SETTLE)
        rss, pss = worker.memory_kib()
    return {"rss_mib": rss / 1024, "pss_mib": pss / 1024}
