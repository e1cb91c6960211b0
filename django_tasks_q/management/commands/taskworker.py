"""``manage.py taskworker``: parse options, run the worker (a ``Supervisor`` of children for prefork)."""

import sys
import threading

from django.core.management.base import BaseCommand, CommandError

from ...exceptions import ImproperlyConfigured
from ...worker import daemon
from ...worker.logging import configure_logging
from ...worker.supervisor import create_worker


class Command(BaseCommand):
    help = "Consume task queues and run their tasks."

    def add_arguments(self, parser):
        parser.add_argument("-Q", "--queues", default=None,
                            help="comma-separated queues to consume (default: TASKS_Q['DEFAULT_QUEUE'])")
        parser.add_argument("-c", "--concurrency", type=int, default=None, help="pool size (default: CPU count)")
        parser.add_argument("-P", "--pool", choices=["prefork", "threads", "solo", "asyncio", "gevent"],
                            default="prefork")
        parser.add_argument("-n", "--hostname", default=None, help="worker name; %%h is the host name")
        parser.add_argument("-l", "--loglevel", default="INFO")
        parser.add_argument("--prefetch-multiplier", type=int, default=None)
        parser.add_argument("--max-tasks-per-child", type=int, default=None)
        parser.add_argument("--max-memory-per-child", type=int, default=None, help="KB of resident memory")
        parser.add_argument("--without-heartbeat", action="store_true",
                            help="write no Worker row and run no watchdog (TASKS_Q['WORKER_HEARTBEAT'] = 0)")
        parser.add_argument("-E", "--events", action="store_true", default=None,
                            help="publish Celery-format task and worker events (TASKS_Q['EVENTS'] = True)")
        parser.add_argument("-B", "--beat", action="store_true",
                            help="also run the periodic task scheduler in this process (development)")
        parser.add_argument("--detach", action="store_true", help="run in the background (a daemon)")
        parser.add_argument("--pidfile", default=None, help="write the pid here; refuse if it names a live process")
        parser.add_argument("--logfile", default=None, help="append output here (with --detach: else /dev/null)")

    def run_from_argv(self, argv):
        """``-P gevent``: re-execute through worker/gevent_main.py, which monkey-patches before Django starts."""
        if _asks_for_gevent(argv[2:]):
            try:
                _reexec_patched()
            except CommandError as exc:
                self.stderr.write(f"CommandError: {exc}")
                sys.exit(1)
        super().run_from_argv(argv)

    def handle(self, *args, **options):
        daemon.prepare(options["detach"], options["pidfile"], options["logfile"])  # before any connection
        configure_logging(options["loglevel"])
        queues = [q.strip() for q in (options["queues"] or "").split(",") if q.strip()] or None
        try:
            worker = create_worker(queues=queues, concurrency=options["concurrency"], pool=options["pool"],
                                   hostname=options["hostname"], prefetch_multiplier=options["prefetch_multiplier"],
                                   max_tasks_per_child=options["max_tasks_per_child"],
                                   max_memory_per_child=options["max_memory_per_child"],
                                   heartbeat=0 if options["without_heartbeat"] else None,
                                   events=True if options["events"] else None)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        worker.install_signal_handlers()
        scheduler = start_embedded_beat() if options["beat"] else None
        try:
            worker.run()
        except ImproperlyConfigured as exc:  # e.g. the broker refused a queue declaration
            raise CommandError(str(exc)) from exc
        finally:
            if scheduler is not None:
                scheduler.stop()
        if worker.cold:  # running tasks were abandoned: say so to the supervisor
            sys.exit(1)


def _asks_for_gevent(args: list[str]) -> bool:
    """``-P gevent``, ``-Pgevent``, ``--pool gevent`` or ``--pool=gevent`` among the command's arguments."""
    pairs = zip(args, args[1:] + [""])
    return any(arg in ("-Pgevent", "--pool=gevent") or (arg in ("-P", "--pool") and value == "gevent")
               for arg, value in pairs)


def _reexec_patched() -> None:
    """Replace this process with the same command line, gevent-patched first; return if already patched.

    gevent_main.py is run by path (``python -c``), not with ``-m``: importing
    ``django_tasks_q`` would import Django and kombu before the patch.
    """
    import os

    try:
        from gevent import monkey
    except ImportError as exc:
        from ...extras import install_command

        raise CommandError(f"-P gevent needs the Python package 'gevent', which is not installed: "
                           f"{install_command('gevent')}") from exc
    if monkey.is_module_patched("socket"):
        return
    entry = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "worker", "gevent_main.py")
    boot = f"import runpy; runpy.run_path({entry!r}, run_name='__main__')"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-c", boot, *sys.argv])


def start_embedded_beat():
    """``--beat``: the scheduler in a thread of the worker, as ``celery worker -B``."""
    from ...beat.scheduler import Scheduler
    from ...beat.sync import sync_settings_schedule

    try:
        sync_settings_schedule()  # fail here, before the worker starts, not silently in the thread
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from exc
    scheduler = Scheduler()
    threading.Thread(target=scheduler.run, name="beat", daemon=True).start()
    return scheduler
