"""``make demo``: the whole loop on the embedded broker, with nothing else running.

Migrates the demo site's SQLite database, starts ``manage.py taskworker
--beat`` on ``django://``, sends real tasks from the videos and reports apps,
lets beat run a periodic task every two seconds, prints the results, and
stops the worker it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
os.environ["TASKS_Q_BROKER_URL"] = "django://"


def manage(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, check=True)


def start_worker(log_path: Path) -> subprocess.Popen:
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "taskworker", "-Q", "default,videos,reports", "-P", "threads",
         "-c", "2", "-n", "demo@%h", "--beat"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while "ready: consuming" not in log_path.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            print(log_path.read_text())
            raise SystemExit("the worker did not start")
        time.sleep(0.1)
    return worker


def main() -> None:
    print("== migrating the demo database (db.sqlite3)")
    manage("migrate", "--no-input", "-v", "0")
    import django

    django.setup()
    from django.contrib.auth.models import User

    if not User.objects.filter(is_superuser=True).exists():
        User.objects.create_superuser("admin", "admin@example.com", "admin")
        print("== created superuser admin / admin for the admin pages")

    from django_tasks_q.models import IntervalSchedule, PeriodicTask, TaskResult

    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period="seconds")
    PeriodicTask.objects.update_or_create(
        name="demo: add(20, 22) every 2 seconds",
        defaults={"task": "testproject.videos.tasks.add", "args": [20, 22], "interval": every_2s, "enabled": True},
    )
    print("== periodic task 'demo: add(20, 22) every 2 seconds' is enabled (edit it in the admin)")
    log_path = ROOT / "demo-worker.log"
    print("== starting: manage.py taskworker -Q default,videos,reports --beat (broker django://)")
    from django.utils import timezone

    demo_started = timezone.now()
    worker = start_worker(log_path)
    print(log_path.read_text().split("\n [", 1)[0].rstrip())
    try:
        from testproject.reports.tasks import build_report
        from testproject.videos.tasks import add, compress, fail

        print("\n== sending tasks")
        calls = {
            "add.delay(2, 3)": add.delay(2, 3),
            "add.apply_async((10, 20), countdown=2)": add.apply_async((10, 20), countdown=2),
            "compress.delay(7, steps=3, delay=0.3)  [queue videos]": compress.delay(7, steps=3, delay=0.3),
            "build_report.delay('2026-11-22')  [queue reports]": build_report.delay("2026-11-22"),
            "fail.delay('demo failure')": fail.delay("demo failure"),
        }
        progress = calls["compress.delay(7, steps=3, delay=0.3)  [queue videos]"]
        for _ in range(40):
            if progress.state == "PROGRESS":
                print(f"   compress is running: state PROGRESS, info {progress.info}")
                break
            time.sleep(0.05)
        print("\n== results")
        for call, result in calls.items():
            value = result.get(timeout=30, propagate=False)
            shown = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else repr(value)
            print(f"   {call:<55} -> {result.state:<8} {shown}")
        started = time.monotonic()
        periodic = TaskResult.objects.none()
        while time.monotonic() - started < 15:
            periodic = TaskResult.objects.filter(task_name="testproject.videos.tasks.add", args=[20, 22],
                                                 state="SUCCESS", date_done__gte=demo_started)
            if periodic.count() >= 2:
                break
            time.sleep(0.2)
        print(f"\n== beat ran the periodic task {periodic.count()} times while we watched:")
        for row in periodic.order_by("date_done")[:3]:
            print(f"   {row.date_done:%H:%M:%S}  add(20, 22) -> {row.result}")
    finally:
        PeriodicTask.objects.filter(name__startswith="demo: ").update(enabled=False)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        print(f"\n== worker stopped (exit code {code}); its log is in {log_path.name}")
    print("\nSee every result in the admin: python manage.py runserver, then open")
    print("http://127.0.0.1:8000/admin/django_tasks_q/taskresult/  (user admin, password admin)")
    print("and the periodic tasks at http://127.0.0.1:8000/admin/django_tasks_q/periodictask/")


if __name__ == "__main__":
    main()
