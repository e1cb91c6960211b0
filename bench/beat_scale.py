"""Beat with many periodic tasks: ours against django-celery-beat's ``DatabaseScheduler``, on one database.

    .venv/bin/python bench/beat_scale.py [--sizes 1000,10000,100000] [--checks 5]

For each size N it fills both schedulers' tables with the same mix -- half crontabs ``m */3 * * *`` in
Europe/London over 60 schedule rows, half intervals of an hour -- on a fresh SQLite database (issue 26's
measurement), then times, in this process, with nothing due:

* **ours**: ``Scheduler.tick()`` until every new task is planned (the checks after a bulk insert), then
  the median of ``--checks`` further checks;
* **django-celery-beat**: ``DatabaseScheduler.tick()`` (Celery's beat loop over its model entries): the
  first tick (it reads every row into the heap), then the median of ``--checks`` further ticks.

Prints seconds per check. Not measured here yet: lateness of due sends, CPU and memory over time, the time
from an edit to its effect, PostgreSQL (issue 26, part 2). Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(n: int) -> None:
    """N tasks in each scheduler's tables, the same mix for both."""
    from django_celery_beat import models as theirs

    from django_tasks_q import models as ours

    our_crons = [ours.CrontabSchedule.objects.create(minute=str(m), hour="*/3", timezone="Europe/London")
                 for m in range(60)]
    our_hour = ours.IntervalSchedule.objects.create(every=3600, period="seconds")
    their_crons = [theirs.CrontabSchedule.objects.create(minute=str(m), hour="*/3", timezone="Europe/London")
                   for m in range(60)]
    their_hour = theirs.IntervalSchedule.objects.create(every=3600, period=theirs.IntervalSchedule.SECONDS)
    ours.PeriodicTask.objects.bulk_create(
        [ours.PeriodicTask(name=f"t{i}", task="bench.noop",
                           **({"crontab": our_crons[i % 60]} if i % 2 else {"interval": our_hour}))
         for i in range(n)], batch_size=2000)
    theirs.PeriodicTask.objects.bulk_create(
        [theirs.PeriodicTask(name=f"t{i}", task="bench.noop",
                             **({"crontab": their_crons[i % 60]} if i % 2 else {"interval": their_hour}))
         for i in range(n)], batch_size=2000)
    theirs.PeriodicTasks.update_changed()


def measure_ours(checks: int) -> dict[str, float]:
    from django.utils import timezone

    from django_tasks_q.beat.lock import Lease
    from django_tasks_q.beat.scheduler import Scheduler
    from django_tasks_q.models import PeriodicTask

    scheduler, lease = Scheduler(), Lease()
    started, planning = time.perf_counter(), 0
    while PeriodicTask.objects.filter(enabled=True, next_run_at__isnull=True).exists():
        scheduler.tick(lease, timezone.now())
        planning += 1
    planned = time.perf_counter() - started
    steady = []
    for _ in range(checks):
        began = time.perf_counter()
        scheduler.tick(lease, timezone.now())
        steady.append(time.perf_counter() - began)
    return {"first": planned, "first_checks": planning, "steady": statistics.median(steady)}


def measure_theirs(checks: int) -> dict[str, float]:
    from celery import Celery
    from django_celery_beat.schedulers import DatabaseScheduler

    app = Celery("bench", broker="memory://")
    app.conf.timezone = "UTC"
    scheduler = DatabaseScheduler(app=app)
    began = time.perf_counter()
    scheduler.tick()
    first = time.perf_counter() - began
    steady = []
    for _ in range(checks):
        began = time.perf_counter()
        scheduler.tick()
        steady.append(time.perf_counter() - began)
    return {"first": first, "first_checks": 1, "steady": statistics.median(steady)}


def run_size(n: int, checks: int) -> str:
    """Measure one size in a fresh process and database (each scheduler keeps process-wide caches)."""
    database = tempfile.mktemp(prefix="bench-beat-", suffix=".sqlite3")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.beat_settings", "TESTPROJECT_SQLITE": database,
           "TASKS_Q_BROKER_URL": "memory://", "PYTHONPATH": str(ROOT)}
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--checks", str(checks)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            return f"{n:>8,}  failed: {done.stderr[-1500:]}"
        return done.stdout.strip()
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(database + suffix).unlink(missing_ok=True)


def one(n: int, checks: int) -> None:
    import django

    django.setup()
    logging.disable(logging.WARNING)
    fill(n)
    ours, theirs = measure_ours(checks), measure_theirs(checks)
    print(f"{n:>8,}  ours: first {ours['first']:7.3f} s over {ours['first_checks']:.0f} check(s), then "
          f"{ours['steady']:7.4f} s per check   django-celery-beat: first tick {theirs['first']:7.3f} s, then "
          f"{theirs['steady']:7.4f} s per tick   ({theirs['steady'] / ours['steady']:.0f}x ours)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--checks", type=int, default=5)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process for one size
    args = parser.parse_args()
    if args.one:
        one(args.one, args.checks)
        return
    print("periodic tasks, SQLite, nothing due (half crontab m */3 * * * Europe/London over 60 rows, half hourly)")
    for size in (int(value) for value in args.sizes.split(",")):
        print(run_size(size, args.checks), flush=True)


if __name__ == "__main__":
    main()
