"""``manage.py taskbeat``: run the periodic task scheduler."""

import signal

from django.core.management.base import BaseCommand, CommandError

from ...beat.scheduler import Scheduler
from ...exceptions import ImproperlyConfigured
from ...worker.logging import configure_logging


class Command(BaseCommand):
    help = "Send periodic tasks when they are due (schedules live in the admin and TASKS_Q['BEAT_SCHEDULE'])."

    def add_arguments(self, parser):
        parser.add_argument("-l", "--loglevel", default="INFO")
        parser.add_argument("--max-interval", type=float, default=1.0,
                            help="longest sleep between checks, seconds (edits are seen within it)")

    def handle(self, *args, **options):
        configure_logging(options["loglevel"])
        scheduler = Scheduler(poll_interval=options["max_interval"])
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: scheduler.stop())
        try:
            scheduler.run()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
