"""Enqueue N no-op tasks one call at a time, then drain them with one worker process.

Runs django-tasks-q and Celery on the same private redis-server in one run,
then django-tasks-q on the embedded ``django://`` broker (SQLite), and
prints tasks/s for each and the ratio ours/Celery. Medians of ``--runs``.

    .venv/bin/python bench/enqueue_drain.py [--tasks 20000] [--runs 3]

The drain is timed from starting the worker process to the moment it runs
a final marker task sent after the N no-ops (both workers are FIFO with the
solo pool, so the marker runs last), minus the same worker's start-up time
measured with the marker alone on an empty queue. Results: ours is measured twice, with
the default ORM result backend (every task's result stored in SQLite) and
with ``ignore_result`` (no result write), since Celery's default is to
store nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")


def run_worker_until(command: list[str], env: dict, marker: Path, timeout: float = 600) -> float:
    """Seconds from starting the worker process until it has run the marker task."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.perf_counter()
        while not marker.exists():
            if worker.poll() is not None or time.perf_counter() - started > timeout:
                raise SystemExit(f"worker died or stalled: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.002)
        return time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(30)
        marker.unlink(missing_ok=True)
        os.unlink(log.name)


def enqueue(send, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        send()
    return time.perf_counter() - started


def measure(send_noop, send_marker, command: list[str], env: dict, n: int) -> tuple[float, float]:
    marker = Path(tempfile.mktemp(suffix=".start"))
    send_marker(str(marker))
    startup = run_worker_until(command, env, marker)  # empty queue: start-up time only
    send_noop()  # warm the client connection outside the timing
    seconds = enqueue(send_noop, n - 1)
    marker = Path(tempfile.mktemp(suffix=".done"))
    send_marker(str(marker))
    drained = run_worker_until(command, env, marker) - startup
    return n / seconds, (n + 1) / drained


def run_ours(broker_url: str, n: int, store_results: bool, db_path: str) -> tuple[float, float]:
    os.environ.update({"TASKS_Q_BROKER_URL": broker_url, "TESTPROJECT_SQLITE": db_path, "PYTHONUNBUFFERED": "1"})
    import django

    django.setup()
    from django_tasks_q.broker import connection
    from django_tasks_q.conf import settings
    from testproject.videos.tasks import noop, touch

    settings.reload()
    connection.reset()
    options = {} if store_results else {"ignore_result": True}
    command = [sys.executable, "manage.py", "taskworker", "-P", "solo", "-l", "WARNING"]
    return measure(lambda: noop.apply_async(**options), touch.delay, command, dict(os.environ), n)


def run_celery(broker_url: str, n: int) -> tuple[float, float]:
    os.environ["BENCH_BROKER_URL"] = broker_url
    from bench import celery_app

    celery_app.app.conf.broker_url = broker_url
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "solo", "-l", "WARNING",
               "-Q", "default", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return measure(celery_app.noop.delay, celery_app.touch.delay, command, dict(os.environ), n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-django", action="store_true", help="skip the django:// (SQLite) figures")
    args = parser.parse_args()
    from tests.servers import RedisServer, serve

    db_path = tempfile.mktemp(suffix=".sqlite3")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True,
                   env={**os.environ, "TESTPROJECT_SQLITE": db_path})
    rows: dict[str, list[tuple[float, float]]] = {}
    with serve(RedisServer()) as redis_url:
        for _ in range(args.runs):
            rows.setdefault("celery 5.7, redis (no results)", []).append(run_celery(redis_url, args.tasks))
            rows.setdefault("ours, redis (ignore_result)", []).append(run_ours(redis_url, args.tasks, False, db_path))
            rows.setdefault("ours, redis (ORM results)", []).append(run_ours(redis_url, args.tasks, True, db_path))
    if not args.skip_django:
        for _ in range(args.runs):
            rows.setdefault("ours, django:// sqlite (ORM results)", []).append(
                run_ours("django://", args.tasks, True, db_path))
    print(f"\n{args.tasks} no-op tasks, median of {args.runs} runs, one worker process (solo pool)")
    print(f"{'system':<40} {'enqueue/s':>10} {'drain/s':>10}")
    medians = {}
    for name, figures in rows.items():
        enq = statistics.median(f[0] for f in figures)
        drn = statistics.median(f[1] for f in figures)
        medians[name] = (enq, drn)
        print(f"{name:<40} {enq:>10,.0f} {drn:>10,.0f}")
    peer = medians["celery 5.7, redis (no results)"]
    for name, (enq, drn) in medians.items():
        if "redis" in name and name.startswith("ours"):
            print(f"ratio ours/celery  {name:<32} enqueue x{enq / peer[0]:.2f}  drain x{drn / peer[1]:.2f}")
    os.unlink(db_path)


if __name__ == "__main__":
    main()
