"""``manage.py taskhealth``: exit 0 when this host's workers are alive and well, 1 otherwise.

For container and process-manager probes. It reads the ``Worker`` rows the
workers' heartbeats write (see worker/monitor.py), so it needs the
database, not the broker, and answers in one query.
"""

from __future__ import annotations

import socket
import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ...models import Worker
from ...worker.worker import expand_hostname


def this_hosts_workers() -> list[Worker]:
    """Rows named ``<anything>@<this host>`` (full or short host name), as ``-n name@%h`` makes them."""
    host = socket.gethostname()
    suffixes = {f"@{host}", f"@{host.split('.')[0]}"}
    return [w for w in Worker.objects.order_by("hostname") if any(w.hostname.endswith(s) for s in suffixes)]


def verdict(worker: Worker, max_age: float | None, now=None) -> tuple[bool, str]:
    """``(healthy, one line saying why)``."""
    now = now or timezone.now()
    name = worker.hostname
    if worker.stopped_at is not None:
        return False, f"{name}: stopped cleanly at {worker.stopped_at.isoformat()}"
    if worker.last_heartbeat is None:
        return False, f"{name}: offline: it never wrote a heartbeat"
    age = (now - worker.last_heartbeat).total_seconds()
    limit = max_age if max_age is not None else 3 * max(worker.heartbeat_interval, 1.0)
    if age > limit:
        return False, (f"{name}: offline since {worker.last_heartbeat.isoformat()} (last heartbeat {age:.0f}s ago, "
                       f"limit {limit:.0f}s; pid {worker.pid})")
    if worker.problem:
        return False, f"{name}: stuck: {worker.problem}"
    return True, (f"{name}: ok (pid {worker.pid}, heartbeat {age:.1f}s ago, {worker.active} running, "
                  f"{worker.processed} processed, {worker.failed} failed)")


class Command(BaseCommand):
    help = ("Exit 0 when the worker(s) on this host are online and report no problem, else 1; "
            "prints one line per worker.")

    def add_arguments(self, parser):
        parser.add_argument("-n", "--hostname", action="append", default=None,
                            help="the worker's name as given to taskworker -n (%%h, %%n expand); repeatable; "
                                 "default: every worker named ...@<this host>")
        parser.add_argument("--max-age", type=float, default=None,
                            help="seconds a heartbeat stays fresh (default: 3 x the worker's heartbeat interval)")

    def handle(self, *args, **options):
        max_age = options["max_age"]
        if max_age is not None and max_age <= 0:
            raise CommandError(f"--max-age must be a positive number of seconds, got {max_age}")
        names = options["hostname"]
        if names:
            wanted = [expand_hostname(name) for name in names]
            found = {w.hostname: w for w in Worker.objects.filter(hostname__in=wanted)}
            workers = [found.get(name) or name for name in wanted]
        else:
            workers = this_hosts_workers()
            if not workers:
                self.stdout.write(f"no worker on this host ({socket.gethostname()}): no Worker row named "
                                  f"...@{socket.gethostname()}")
                sys.exit(1)
        now = timezone.now()
        healthy = True
        for worker in workers:
            if isinstance(worker, str):
                ok, line = False, f"{worker}: unknown: no worker of that name ever wrote a heartbeat"
            else:
                ok, line = verdict(worker, max_age, now)
            healthy &= ok
            self.stdout.write(line)
        if not healthy:
            sys.exit(1)


__all__ = ["Command", "verdict", "this_hosts_workers"]
