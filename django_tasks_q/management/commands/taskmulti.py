"""``manage.py taskmulti start|stop|restart|status NAME...``: named background workers.

The counterpart of ``celery multi``: each NAME is one ``taskworker --detach``
with ``-n NAME@%h``, its pid in ``<pidfile-dir>/NAME.pid`` and its output in
``<logfile-dir>/NAME.log``. Options taskmulti does not know are handed to
every worker (``taskmulti start a b -P threads -c 4``). The pidfiles are the
only state, so any shell, cron job or deploy script can stop what another
one started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ...worker.daemon import live_pid, pid_alive, read_pid


class Command(BaseCommand):
    help = "Start, stop, restart or list named background workers (like celery multi)."

    def create_parser(self, prog_name, subcommand, **kwargs):
        """Unknown options go to the workers instead of being an error."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.allow_abbrev = False  # --pidfile is a worker option, not short for --pidfile-dir
        parse_known = parser.parse_known_args

        def parse_args(args=None, namespace=None):
            options, extra = parse_known(args, namespace)
            options.worker_args = extra
            return options

        parser.parse_args = parse_args
        return parser

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "restart", "status"])
        parser.add_argument("names", nargs="+", metavar="NAME", help="worker names; options follow the names")
        parser.add_argument("--pidfile-dir", default=".", help="where NAME.pid files live (default: .)")
        parser.add_argument("--logfile-dir", default=".", help="where NAME.log files go (default: .)")
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="seconds stop waits for running tasks to finish (default: 60)")
        parser.add_argument("--kill", action="store_true",
                            help="stop: SIGKILL the workers still running after --timeout")

    def handle(self, *args, **options):
        names: list[str] = options["names"]
        self.pid_dir = Path(options["pidfile_dir"]).resolve()
        self.log_dir = Path(options["logfile_dir"]).resolve()
        action = options["action"]
        failed: list[str] = []
        if action in ("stop", "restart"):
            failed += self.stop(names, options["timeout"], options["kill"])
        if action in ("start", "restart"):
            failed += self.start([n for n in names if n not in failed], options.get("worker_args") or [])
        if action == "status":
            failed += self.status(names)
        if failed:
            what = "not running" if action == "status" else f"{action} failed for"
            raise CommandError(f"{what}: {', '.join(failed)}")

    def pidfile(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    def start(self, names: list[str], worker_args: list[str]) -> list[str]:
        """Launch one detached worker per name; returns the names that did not start."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        failed = []
        for name in names:
            command = [sys.executable, os.path.abspath(sys.argv[0]), "taskworker", "-n", f"{name}@%h",
                       "--detach", "--pidfile", str(self.pidfile(name)),
                       "--logfile", str(self.log_dir / f"{name}.log"), *worker_args]
            # taskworker --detach itself refuses a pidfile naming a live process, with the reason
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode == 0:
                self.stdout.write(f"{name}: started (pid {read_pid(self.pidfile(name))})")
            else:
                self.stderr.write(f"{name}: not started: {done.stderr.strip() or done.returncode}")
                failed.append(name)
        return failed

    def stop(self, names: list[str], timeout: float, kill: bool) -> list[str]:
        """SIGTERM (warm shutdown) every live worker, wait for all; returns the names still running."""
        running: dict[str, int] = {}
        for name in names:
            pid = self._live_or_clean(name)
            if pid is None:
                self.stdout.write(f"{name}: not running")
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # it just went: the wait below sees it gone
            running[name] = pid
            self.stdout.write(f"{name}: stopping (pid {pid})")
        running = self._wait_gone(running, timeout)
        if kill and running:
            for name, pid in running.items():
                self.stdout.write(f"{name}: did not stop within {timeout:g}s, killing (pid {pid})")
                _kill_hard(pid)
            running = self._wait_gone(running, 10)
        for name, pid in running.items():
            self.stderr.write(f"{name}: still running after {timeout:g}s (pid {pid})")
        return list(running)

    def _wait_gone(self, running: dict[str, int], timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while running and time.monotonic() < deadline:
            time.sleep(0.1)
            for name, pid in list(running.items()):
                if not pid_alive(pid):
                    self._live_or_clean(name)  # a worker killed hard leaves its pidfile behind
                    self.stdout.write(f"{name}: stopped")
                    del running[name]
        return running

    def _live_or_clean(self, name: str) -> int | None:
        """The worker's pid when it runs; a stale pidfile is removed."""
        pid = live_pid(self.pidfile(name))
        if pid is None:
            self.pidfile(name).unlink(missing_ok=True)
        return pid

    def status(self, names: list[str]) -> list[str]:
        """One line per name; returns the names not running (so the exit code tells)."""
        down = []
        for name in names:
            pid = read_pid(self.pidfile(name))
            if pid is None:
                self.stdout.write(f"{name}: stopped")
            elif pid_alive(pid):
                self.stdout.write(f"{name}: running (pid {pid})")
                continue
            else:
                self.stdout.write(f"{name}: stale pidfile (pid {pid} is not running)")
            down.append(name)
        return down


def _kill_hard(pid: int) -> None:
    """SIGKILL the worker and its pool processes.

    A ``--detach`` worker's process group is its own (its session was made
    for it), so the group is killed; otherwise only the pid, never a shell's group.
    """
    try:
        group = os.getpgid(pid)
        if os.getsid(pid) == group and group != os.getpgid(0):
            os.killpg(group, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
