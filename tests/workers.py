"""Real worker processes for tests: ``manage.py taskworker`` in a subprocess.

Workers see the test's database (the SQLite test file, handed over through
``TESTPROJECT_SQLITE``) and broker (``TASKS_Q_BROKER_URL``), exactly as a
user's worker sees the site's settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def worker_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TASKS_Q_BROKER_URL", None)
    env.update({"TASKS_Q_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1",
                "TESTPROJECT_SQLITE": str(connection.settings_dict["NAME"])})
    env.update(extra)
    return env


class WorkerProcess:
    """One ``manage.py taskworker`` subprocess with its output captured in a file."""

    #: the line ``start()`` waits for
    ready_text = "ready: consuming"

    def __init__(self, broker_url: str, *args: str, env: dict[str, str] | None = None):
        self.args = [sys.executable, str(ROOT / "manage.py"), "taskworker", *args]
        self.env = {**worker_env(broker_url), **(env or {})}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="taskworker-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "WorkerProcess":
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for(self.ready_text, timeout)
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited ({self.process.returncode}) before {text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"worker did not print {text!r} within {timeout}s:\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        """Warm shutdown (SIGTERM) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"worker ignored SIGTERM for {timeout}s:\n{self.output()}") from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the worker and every process it started (its session)."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()
            os.unlink(self.log.name)
