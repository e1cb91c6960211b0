"""Workers as a service: ``taskworker --detach/--pidfile/--logfile`` and ``taskmulti``.

Real processes throughout: the commands run as ``manage.py`` subprocesses
with the same environment as ``tests.workers`` (the test's SQLite database,
the ``django://`` broker), so the daemons they leave behind share the test
database. Every process left running is SIGKILLed from its pidfile at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from django_tasks_q.worker.daemon import pid_alive, read_pid
from testproject.videos.tasks import add
from tests.integration.test_spine import wait_until
from tests.workers import ROOT, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def manage(tmp_path, broker):
    """``manage(*args)`` runs ``manage.py *args`` in ``tmp_path``; daemons are killed afterwards."""
    broker("django://")
    env = worker_env("django://")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=tmp_path, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)

    try:
        yield run
    finally:
        for pidfile in tmp_path.rglob("*.pid"):
            pid = read_pid(pidfile)
            if pid and pid_alive(pid) and os.getpgid(pid) != os.getpgid(0):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_taskmulti_start_status_stop(manage, tmp_path):
    dirs = ["--pidfile-dir", str(tmp_path / "run"), "--logfile-dir", str(tmp_path / "log")]
    started = manage("taskmulti", "start", "alpha", "beta", *dirs, "-P", "threads", "-c", "1")
    assert started.returncode == 0, started.stderr
    pids = {name: read_pid(tmp_path / "run" / f"{name}.pid") for name in ("alpha", "beta")}
    assert all(pid and pid_alive(pid) for pid in pids.values()), pids

    status = manage("taskmulti", "status", "alpha", "beta", *dirs)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == [f"alpha: running (pid {pids['alpha']})",
                                          f"beta: running (pid {pids['beta']})"]

    again = manage("taskmulti", "start", "alpha", *dirs)
    assert again.returncode != 0
    assert f"names a running process (pid {pids['alpha']})" in again.stderr

    assert add.delay(2, 3).get(timeout=30) == 5

    stopped = manage("taskmulti", "stop", "alpha", "beta", *dirs, "--timeout", "20")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for name, pid in pids.items():
        assert not pid_alive(pid)
        assert not (tmp_path / "run" / f"{name}.pid").exists()
        log = (tmp_path / "log" / f"{name}.log").read_text()
        assert f"{name}@" in log and "warm shutdown: waiting for" in log, log

    status = manage("taskmulti", "status", "alpha", "beta", *dirs)
    assert status.returncode != 0
    assert status.stdout.splitlines() == ["alpha: stopped", "beta: stopped"]


def test_taskworker_detach(manage, tmp_path):
    pidfile, logfile = tmp_path / "w.pid", tmp_path / "w.log"
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile.write_text(f"{gone.pid}\n")  # stale: replaced, not a reason to refuse

    began = time.monotonic()
    detached = manage("taskworker", "--detach", "--pidfile", str(pidfile), "--logfile", str(logfile),
                      "-P", "solo", "-n", "detached@%h")
    assert detached.returncode == 0, detached.stderr
    assert time.monotonic() - began < 10  # it returned, it did not run the worker
    pid = read_pid(pidfile)
    assert pid not in (None, gone.pid) and pid_alive(pid)

    refused = manage("taskworker", "--detach", "--pidfile", str(pidfile), "-P", "solo")
    assert refused.returncode != 0
    assert f"pidfile {pidfile} names a running process (pid {pid})" in refused.stderr
    assert read_pid(pidfile) == pid

    wait_until(lambda: "ready: consuming" in logfile.read_text(), timeout=20)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), timeout=20)
    assert not pidfile.exists()
    assert "warm shutdown" in logfile.read_text()
