"""``manage.py taskstatus``: which workers are online right now (they answer a ping).

``celery status`` for our workers and Celery's. Exit status 1 when none is.
For the workers' recorded history (heartbeats, offline ones) see the
``Worker`` rows in the admin or ``manage.py taskhealth``.
"""

from django.core.management.base import BaseCommand, CommandError

from ...inspection import ask


class Command(BaseCommand):
    help = "List the workers that answer a ping."

    def add_arguments(self, parser):
        parser.add_argument("-t", "--timeout", type=float, default=1.0, help="seconds to wait for replies")

    def handle(self, *args, **options):
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds")
        replies = ask("ping", timeout=options["timeout"])
        for hostname in sorted(replies.answers):
            self.stdout.write(f"{hostname}: OK")
        count = len(replies.answers)
        if not count:
            raise CommandError(f"no worker answered within {options['timeout']:g}s", returncode=1)
        self.stdout.write(f"\n{count} worker{'s' if count != 1 else ''} online.")
