"""A fresh virtualenv with the wheel installed, a site from ``startproject``, and its worker.

Everything runs as a user runs it: the virtualenv's ``pip``,
``django-admin startproject``, ``manage.py migrate``, ``manage.py taskworker``
in its own process, and ``manage.py shell -c`` for the calls a view would
make.  The processes see none of the test run's environment (no
``DJANGO_SETTINGS_MODULE``, ``PYTHONPATH`` or ``TASKS_Q_*``), so the site's
settings.py is all they configure from, and the package they import is the
one pip installed.

Every failure is an ``AssertionError`` naming the command, with its stderr
and stdout and the tail of the worker's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: seconds for one ``pip install`` (from the pip cache it takes a few)
PIP_TIMEOUT = 300
#: seconds for any other command
COMMAND_TIMEOUT = 90
#: seconds for the worker to say it consumes
WORKER_READY_TIMEOUT = 45
#: seconds the calls wait for the task's result
RESULT_TIMEOUT = 30
#: the line the worker logs once it consumes
READY_TEXT = "ready: consuming"
#: seconds the dashboard's API may take to list the worker (two heartbeats of the default 5 s, and some)
HEARTBEAT_WAIT = 12
#: the queue every case uses, so a server shared with other tests hands the worker only our messages
QUEUE = "install-test"
#: the admin page of the dashboard, in the urls.py startproject writes
DASHBOARD_URL = "/admin/django_tasks_q/dashboard/"
#: markup only the real dashboard page has (not the admin's login page or a 404)
DASHBOARD_MARK = 'id="tasksq-dashboard"'
#: what the scripts run by ``manage.py shell -c`` print their answer after
ANSWER = "INSTALL-TEST-ANSWER "

_DROPPED_ENV = ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")

TASKS_PY = '''\
from django_tasks_q import task


@task
def add(x, y):
    return x + y
'''

SETTINGS_TAIL = '''

# --- added by the install test (tests/install/sites.py) ---
INSTALLED_APPS += ["django_tasks_q", "shop"]
TASKS_Q = {tasks_q!r}
STATIC_ROOT = BASE_DIR / "staticfiles"
'''

SEND = '''\
import json
from shop.tasks import add
result = add.delay(2, 3)
print({answer!r} + json.dumps({{"id": result.id, "value": result.get(timeout={timeout})}}))
'''

READ = '''\
import json
import django_tasks_q
from django_tasks_q import AsyncResult
result = AsyncResult({task_id!r})
value = result.get(timeout={timeout})
print({answer!r} + json.dumps({{"value": value, "state": str(result.state), "package": django_tasks_q.__file__}}))
'''

DASHBOARD = '''\
import json
import time
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
user = get_user_model().objects.create_superuser("admin", "admin@example.com", "install-test")
client = Client()
client.force_login(user)
page = client.get({url!r})
deadline = time.monotonic() + {timeout}
while True:  # the worker is listed from its first heartbeat on
    api = client.get({url!r} + "api/dashboard/")
    if api.status_code != 200 or {worker!r} in api.content.decode() or time.monotonic() > deadline:
        break
    time.sleep(0.25)
print({answer!r} + json.dumps({{"status": page.status_code, "page": page.content.decode(errors="replace"),
                               "api_status": api.status_code, "api": api.content.decode(errors="replace")}}))
'''


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Worker:
    """``manage.py taskworker`` of a site, its output in ``worker.log``."""

    def __init__(self, site: Site, hostname: str):
        self.site = site
        self.hostname = hostname
        self.log_path = site.root / "worker.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        argv = [str(self.site.python), "manage.py", "taskworker", "--concurrency", "1", "--loglevel", "info",
                "--hostname", self.hostname]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=self.site.dir, env=self.site.env(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while READY_TEXT not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"taskworker exited with {self.process.returncode} before {READY_TEXT!r}; "
                                     f"its log:\n{tail(self.output())}")
            if time.monotonic() > deadline:
                raise AssertionError(f"taskworker did not log {READY_TEXT!r} within {WORKER_READY_TIMEOUT} s; "
                                     f"its log:\n{tail(self.output())}")
            time.sleep(0.1)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int:
        """Warm shutdown (SIGTERM to the worker) and wait; SIGKILL what is left of its session after."""
        if self.process is None:
            return 0
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"taskworker ignored SIGTERM for {timeout} s; its log:\n"
                                         f"{tail(self.output())}") from None
            return self.process.returncode
        finally:
            # The worker started this session (start_new_session), so its group id is its PID:
            # only processes it started are in it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


class Site:
    """A virtualenv in ``root/venv`` and a startproject site in ``root/site``."""

    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.dir = root / "site"
        self.worker: Worker | None = None
        #: (step, seconds) in the order they ran
        self.timings: list[tuple[str, float]] = []

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if key not in _DROPPED_ENV and not key.startswith(("TASKS_Q_", "TESTPROJECT_"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- commands

    def run(self, step: str, argv: list[str], *, timeout: float = COMMAND_TIMEOUT, cwd: Path | None = None) -> str:
        """Run ``argv``; its stdout, or an AssertionError with everything needed to see why not."""
        began = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=cwd or self.dir, env=self.env(), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise self.failure(f"{step}: {argv} did not finish within {timeout} s",
                               _text(exc.stdout), _text(exc.stderr)) from None
        self.timings.append((step, time.monotonic() - began))
        if done.returncode != 0:
            raise self.failure(f"{step}: {argv} exited with {done.returncode}", done.stdout, done.stderr)
        return done.stdout

    def manage(self, step: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        return self.run(step, [str(self.python), "manage.py", *args], timeout=timeout)

    def shell(self, step: str, script: str) -> dict:
        """Run ``script`` with ``manage.py shell -c``; the JSON it printed after :data:`ANSWER`."""
        out = self.manage(step, "shell", "-c", script)
        answers = [line[len(ANSWER):] for line in out.splitlines() if line.startswith(ANSWER)]
        if not answers:
            raise self.failure(f"{step}: the script printed no answer", out, "")
        return json.loads(answers[-1])

    def failure(self, message: str, stdout: str = "", stderr: str = "") -> AssertionError:
        parts = [message]
        if stderr:
            parts.append(f"--- stderr (tail):\n{tail(stderr)}")
        if stdout:
            parts.append(f"--- stdout (tail):\n{tail(stdout, 20)}")
        if self.worker is not None:
            parts.append(f"--- taskworker log (tail):\n{tail(self.worker.output())}")
        return AssertionError("\n".join(parts))

    # -- the steps a user takes

    def install(self, wheel: Path, extra: str | None, beside: tuple[str, ...] = ()) -> None:
        """A new virtualenv with ``<wheel>[extra]`` and what it requires, and the requirements ``beside``
        (e.g. the Celery a site migrating from it keeps) resolved together with it: nothing else."""
        self.run("venv", [sys.executable, "-m", "venv", str(self.venv)], cwd=self.root)
        requirement = f"{wheel}[{extra}]" if extra else str(wheel)
        self.run("pip install", [str(self.python), "-m", "pip", "install", "--quiet", requirement, *beside],
                 timeout=PIP_TIMEOUT, cwd=self.root)

    def create(self, tasks_q: dict) -> None:
        """``startproject`` and ``startapp shop``, a ``shop/tasks.py``, our app and ``TASKS_Q`` in settings."""
        self.dir.mkdir()
        self.run("startproject", [str(self.venv / "bin" / "django-admin"), "startproject", "mysite", "."])
        self.manage("startapp", "startapp", "shop")
        (self.dir / "shop" / "tasks.py").write_text(TASKS_PY)
        settings = self.dir / "mysite" / "settings.py"
        settings.write_text(settings.read_text() + SETTINGS_TAIL.format(tasks_q=tasks_q))
        self.manage("migrate", "migrate", "--noinput")

    def start_worker(self, hostname: str) -> Worker:
        began = time.monotonic()
        self.worker = Worker(self, hostname).start()
        self.timings.append(("worker ready", time.monotonic() - began))
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        began = time.monotonic()
        code = self.worker.stop()
        self.timings.append(("worker stop", time.monotonic() - began))
        if code != 0:
            raise self.failure(f"taskworker exited with {code} after SIGTERM")

    def report(self) -> str:
        return ", ".join(f"{step} {seconds:.1f}s" for step, seconds in self.timings)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def check_round_trip(root: Path, wheel: Path, extra: str | None, broker_url: str, result_backend: str,
                     beside: tuple[str, ...] = (), also: Callable[[Site], None] | None = None) -> Site:
    """The whole user path for one extra; returns the site (with its timings) when every step passed.

    ``beside``: more requirements for the same ``pip install``; ``also``: more checks while the worker runs.
    """
    site = Site(root)
    site.install(wheel, extra, beside)
    site.create({"BROKER_URL": broker_url, "RESULT_BACKEND": result_backend, "DEFAULT_QUEUE": QUEUE})
    hostname = f"{root.name}@%h"  # install-redis0@host
    worker = site.start_worker(hostname)
    try:
        if also is not None:
            also(site)
        sent = site.shell("send add.delay(2, 3)", SEND.format(answer=ANSWER, timeout=RESULT_TIMEOUT))
        if sent["value"] != 5:
            raise site.failure(f"add.delay(2, 3).get() returned {sent['value']!r}, not 5")

        read = site.shell("read AsyncResult(id)", READ.format(answer=ANSWER, task_id=sent["id"],
                                                               timeout=RESULT_TIMEOUT))
        if (read["value"], read["state"]) != (5, "SUCCESS"):
            raise site.failure(f"AsyncResult({sent['id']!r}) read {read['value']!r} in state {read['state']!r}, "
                               "not 5 in SUCCESS")
        if not read["package"].startswith(str(site.venv)):
            raise site.failure(f"the site imported django_tasks_q from {read['package']}, not from the virtualenv")

        site.manage("collectstatic", "collectstatic", "--noinput")
        collected = site.dir / "staticfiles" / "django_tasks_q"
        missing = [name for name in ("dashboard.js", "dashboard.css") if not (collected / name).is_file()]
        if missing:
            raise site.failure(f"collectstatic did not copy {missing} to {collected}")

        listed = hostname.replace("%h", "")
        shown = site.shell("dashboard", DASHBOARD.format(answer=ANSWER, url=DASHBOARD_URL, worker=listed,
                                                         timeout=HEARTBEAT_WAIT))
        if shown["status"] != 200 or DASHBOARD_MARK not in shown["page"]:
            raise site.failure(f"GET {DASHBOARD_URL} as a superuser gave {shown['status']} "
                               f"without {DASHBOARD_MARK!r}:\n{tail(shown['page'], 30)}")
        if shown["api_status"] != 200 or listed not in shown["api"]:
            raise site.failure(f"GET {DASHBOARD_URL}api/dashboard/ gave {shown['api_status']} without the worker "
                               f"{listed!r} after {HEARTBEAT_WAIT} s:\n{shown['api'][:1500]}")
    except BaseException:
        _stop_quietly(site)
        raise
    site.stop_worker()
    if "Traceback" in worker.output():
        raise site.failure("the worker logged a traceback")
    shutil.rmtree(site.venv, ignore_errors=True)  # 30-40 MB each; kept when the case fails
    return site


def _stop_quietly(site: Site) -> None:
    """Stop the worker of a case that already failed, keeping that failure the one reported."""
    with contextlib.suppress(AssertionError):
        site.stop_worker()
