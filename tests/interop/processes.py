"""Real Celery processes for the interop suite, started the way Celery users start them, and what they store."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

from tests.workers import ROOT, WorkerProcess


def celery_env(broker_url: str, result_backend: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": result_backend or "",
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


class CeleryProcess(WorkerProcess):
    """One ``celery -A tests.interop.celery_app <command>`` subprocess, run like our workers (tests/workers.py)."""

    ready_text = "ready."

    def __init__(self, broker_url: str, *args: str, result_backend: str | None = None,
                 env: dict[str, str] | None = None):
        self.args = [sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", *args]
        self.env = {**celery_env(broker_url, result_backend), **(env or {})}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="celery-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None


def celery_worker(broker_url: str, *, queues: str = "default,videos", name: str = "celery@%h",
                  result_backend: str | None = None, pool: str = "solo", extra: tuple[str, ...] = ()) -> CeleryProcess:
    """A Celery worker consuming ``queues``; ``--without-mingle --without-gossip`` so it starts fast."""
    return CeleryProcess(broker_url, "worker", "-P", pool, "-Q", queues, "-n", name, "-l", "INFO",
                         "--without-mingle", "--without-gossip", *extra, result_backend=result_backend)


def run_celery(broker_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A one-shot ``celery -A tests.interop.celery_app <args>`` (``inspect``, ``control``), run to its end."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", *args], cwd=ROOT,
                          env=celery_env(broker_url), capture_output=True, text=True, timeout=timeout)


def stored(result_store: str | Any, task_id: str) -> dict:
    """The ``celery-task-meta-<id>`` document a worker (either kind) stored, from a Redis URL or client."""
    import json

    import redis

    client = redis.Redis.from_url(result_store) if isinstance(result_store, str) else result_store
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None, f"no result stored for {task_id}"
    return json.loads(raw)
