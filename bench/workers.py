"""Worker processes of every system, and what ``/proc`` says about them.

A worker is started as its own session (process group), so that it can be
stopped with everything it forked, by the id this module started. Its CPU
time and memory are summed over the worker and all its descendants, read
from ``/proc``: the machine the benchmark runs on is noisy, and CPU seconds
per task move less with noise than wall-clock rates do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def environment(broker_url: str, result_url: str | None = None, **extra: str) -> dict[str, str]:
    """One environment for every system: each reads only its own variables."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
           "DJANGO_SETTINGS_MODULE": "testproject.settings",
           "TASKS_Q_BROKER_URL": broker_url, "BENCH_BROKER_URL": broker_url, **extra}
    for key in ("TASKS_Q_RESULT_BACKEND", "BENCH_RESULT_BACKEND"):
        env.pop(key, None)
    if result_url:
        env["TASKS_Q_RESULT_BACKEND"] = env["BENCH_RESULT_BACKEND"] = result_url
    return env


def worker_command(system: str, broker_url: str, pool: str = "solo", concurrency: int = 1,
                   name: str | None = None, queue: str | None = None) -> list[str]:
    """The worker of ``system``, quiet (warnings only) and otherwise as the library ships it.

    The pools the issue fixes: one process for every drain (Celery and ours
    ``-P solo``, Huey ``-w 1``, RQ's SimpleWorker in burst mode, Dramatiq
    ``-p 1 -t 1``); ``pool``/``concurrency`` apply to ours and Celery, and ``concurrency`` to Huey
    (``-w``; ``pool="process"`` adds ``-k process``: the ``prefork2`` row's two processes).
    ``name`` gives ours a node name of its own (``-n``), for two workers side by side;
    ``queue`` makes ours consume that queue instead of the default one (``-Q``).
    """
    python = sys.executable
    if system == "ours":
        named = ["-n", f"{name}@%h"] if name else []
        queues = ["-Q", queue] if queue else []
        return [python, "manage.py", "taskworker", "-P", pool, "-c", str(concurrency), "-l", "WARNING", *named,
                *queues]
    if system in ("celery", "celery-plain", "celery-django", "celery-site"):
        app = {"celery": "bench.celery_app", "celery-plain": "bench.celery_app",
               "celery-django": "bench.peers.celery_django_app",
               "celery-site": "bench.peers.celery_site_app"}[system]
        return [python, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
                "-l", "WARNING", "-Q", "default", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if system == "huey":
        kind = ["-k", "process"] if pool == "process" else []
        return [python, "-m", "huey.bin.huey_consumer", "bench.peers.huey_app.huey", "-w", str(concurrency), *kind,
                "-q"]
    if system == "rq":
        return [python, "-m", "rq.cli", "worker", "--burst", "-w", "rq.worker.SimpleWorker", "--quiet",
                "--url", broker_url, "default"]
    if system == "dramatiq":
        return [python, "-m", "dramatiq", "bench.peers.dramatiq_app", "-p", "1", "-t", "1"]
    raise ValueError(system)


def client(system: str, env: dict[str, str], *args: object) -> dict:
    """Run ``bench/clients.py`` for ``system`` and return its JSON figures."""
    done = subprocess.run([sys.executable, "-m", "bench.clients", system, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{system} client {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants (from the parent ids in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of the process tree, including children it has reaped (cutime, cstime)."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / CLOCK_TICKS


def memory_kib(root: int) -> tuple[int, int]:
    """(RSS, PSS) of the process tree in KiB. RSS counts pages shared after a fork once per
    process (as ``ps`` and the issue do); PSS splits them, for comparison."""
    rss = pss = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


class Worker:
    """A running worker: ``with Worker(cmd, env) as w: seconds = w.wait_for(marker)``."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command, self.env = command, env
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def __enter__(self) -> Worker:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_for(self, marker: Path, timeout: float = 900) -> float:
        """Seconds from starting the worker until the marker task has run (then removes the marker)."""
        while not marker.exists():
            if self.proc.poll() is not None and not marker.exists():
                raise SystemExit(f"worker exited ({self.proc.returncode}) before the marker ran: {self.tail()}")
            if time.perf_counter() - self.started > timeout:
                raise SystemExit(f"worker stalled: {self.tail()}")
            time.sleep(0.002)
        seconds = time.perf_counter() - self.started
        marker.unlink()
        return seconds

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def memory_kib(self) -> tuple[int, int]:
        return memory_kib(self.proc.pid)

    def tail(self) -> str:
        return self.log_text()[-3000:]

    def log_text(self) -> str:
        """Everything the worker has printed so far (the log file is removed when the worker stops)."""
        return Path(self.log.name).read_text(errors="replace")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """SIGTERM to the worker (a warm shutdown), then SIGKILL to whatever is left of its group.
        When the measurement failed, the worker's log goes to stderr first."""
        if exc_type is not None:
            print(f"--- log of {' '.join(self.command[1:4])} ---\n{self.tail()}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def new_marker() -> Path:
    """A path the marker task will create; nothing exists there yet."""
    handle, name = tempfile.mkstemp(prefix="bench-marker-")
    os.close(handle)
    os.unlink(name)
    return Path(name)
