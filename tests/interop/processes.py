"""Real Celery processes for the interop suite, started the way Celery users start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.workers import ROOT


def celery_env(broker_url: str, result_backend: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": result_backend or "",
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


class CeleryProcess:
    """One ``celery -A tests.interop.celery_app <command>`` subprocess, output captured in a file."""

    ready_text = "ready."

    def __init__(self, broker_url: str, *args: str, result_backend: str | None = None,
                 env: dict[str, str] | None = None):
        self.args = [sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", *args]
        self.env = {**celery_env(broker_url, result_backend), **(env or {})}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="celery-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "CeleryProcess":
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        if self.ready_text:
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
                raise AssertionError(f"celery exited ({self.process.returncode}) before {text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"celery did not print {text!r} within {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)

    def __enter__(self) -> "CeleryProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()
            os.unlink(self.log.name)


def celery_worker(broker_url: str, *, queues: str = "default,videos", name: str = "celery@%h",
                  result_backend: str | None = None, pool: str = "solo", extra: tuple[str, ...] = ()) -> CeleryProcess:
    """A Celery worker consuming ``queues``; ``--without-mingle --without-gossip`` so it starts fast."""
    return CeleryProcess(broker_url, "worker", "-P", pool, "-Q", queues, "-n", name, "-l", "INFO",
                         "--without-mingle", "--without-gossip", *extra, result_backend=result_backend)


def run_celery(broker_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A one-shot ``celery -A tests.interop.celery_app <args>`` (``inspect``, ``control``), run to its end."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", *args], cwd=ROOT,
                          env=celery_env(broker_url), capture_output=True, text=True, timeout=timeout)
