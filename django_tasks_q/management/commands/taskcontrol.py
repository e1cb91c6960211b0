"""``manage.py taskcontrol``: steer workers.

One sub-command per action, each a small ``_do_<name>`` method that calls
library code; ``revoke`` is the first. Others named in the design
(``shutdown``, ``add_consumer``, ``cancel_consumer``, ``rate_limit``) are
added as further sub-parsers and methods.
"""

from django.core.management.base import BaseCommand, CommandError

from ...conf import settings


class Command(BaseCommand):
    help = "Control workers: revoke tasks (more sub-commands to come)."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        revoke = commands.add_parser(
            "revoke", help="make tasks not run (and stop them if running, with --terminate)",
            description="Store a revoke for each task id: a queued, delayed or prefetched task is dropped "
                        "when it reaches a worker, even after every worker restarted. Kept for "
                        "TASKS_Q['REVOKE_EXPIRES'] seconds; running workers see it within about a second.")
        revoke.add_argument("task_ids", nargs="+", metavar="ID", help="task id(s) to revoke")
        revoke.add_argument("--terminate", action="store_true",
                            help="also stop the task if it is running (prefork: signal its child process)")
        revoke.add_argument("--signal", default="SIGTERM",
                            help="signal a terminated prefork child gets: SIGTERM (default), SIGKILL, ...")
        revoke.add_argument("--reason", default="", help="free text kept with the revoke")

    def handle(self, *args, **options):
        return getattr(self, f"_do_{options['action']}")(options)

    def _do_revoke(self, options):
        from ...worker.revocations import parse_signal, revoke

        try:
            signum = parse_signal(options["signal"])
            revoke(options["task_ids"], terminate=options["terminate"], signal=signum.name, reason=options["reason"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        how = f" (terminate with {signum.name})" if options["terminate"] else ""
        for task_id in options["task_ids"]:
            self.stdout.write(f"revoked {task_id}{how}")
        self.stdout.write(f"kept for {settings.REVOKE_EXPIRES:g}s; running workers see it within about a second")
