"""``manage.py taskevents``: record workers' events for the dashboard and show them live."""

from django.core.management.base import BaseCommand, CommandError

from ...eventreceiver import EventReceiver
from ...worker.logging import configure_logging


class Command(BaseCommand):
    help = ("Receive the task and worker events that workers started with -E publish: store them "
            "(raw rows, per-minute roll-ups, worker rows) and print one line per event.")

    def add_arguments(self, parser):
        parser.add_argument("--no-store", action="store_true", help="only show events; write nothing")
        parser.add_argument("-q", "--quiet", action="store_true", help="only store events; print no lines")
        parser.add_argument("--freq", type=float, default=1.0,
                            help="seconds between batch writes to the database (default 1)")
        parser.add_argument("-l", "--loglevel", default="INFO")

    def handle(self, *args, **options):
        configure_logging(options["loglevel"])
        if options["no_store"] and options["quiet"]:
            raise CommandError("--no-store and --quiet together would neither store nor show events")
        if options["freq"] <= 0:
            raise CommandError(f"--freq must be a positive number of seconds, got {options['freq']}")
        receiver = EventReceiver(store=not options["no_store"], show=not options["quiet"], freq=options["freq"],
                                 verbosity=options["verbosity"], out=self.stdout)
        receiver.install_signal_handlers()
        receiver.run()
