"""``manage.py taskpurge [-Q QUEUES] [--force]``: delete every message waiting in queues.

Like ``celery purge``: it asks first (``--force`` does not), then empties
each queue on the broker and says how many messages went. Tasks a worker
already holds (prefetched, running) and tasks parked in the broker's
delayed store until their eta are not in a queue and are not touched.
"""

from django.core.management.base import BaseCommand, CommandError

from ...conf import settings
from ...web.actions import purge


class Command(BaseCommand):
    help = "Delete all waiting messages from queues (default: DEFAULT_QUEUE and TASKS_Q['QUEUES'])."

    def add_arguments(self, parser):
        parser.add_argument("-Q", "--queues", default=None, help="comma-separated queues to purge")
        parser.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")

    def handle(self, *args, **options):
        names = _queue_names(options["queues"])
        if not options["force"] and not _confirmed(names):
            raise CommandError("nothing purged (answer 'yes' to purge, or pass --force)", returncode=1)
        total = 0
        for name in names:
            purged = purge(name)
            total += purged
            self.stdout.write(f"purged {purged} message{'s' if purged != 1 else ''} from {name}")
        self.stdout.write(f"{total} message{'s' if total != 1 else ''} deleted from {len(names)} queue(s)")


def _queue_names(value: str | None) -> list[str]:
    if value:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names:
            raise CommandError("-Q names no queue")
        return names
    return sorted({settings.DEFAULT_QUEUE, *(settings.QUEUES or {})})


def _confirmed(names: list[str]) -> bool:
    answer = input(f"Delete every waiting message in {', '.join(names)}? This cannot be undone. [yes/no] ")
    return answer.strip().lower() in ("y", "yes")
