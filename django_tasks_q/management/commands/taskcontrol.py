"""``manage.py taskcontrol``: steer workers.

One sub-command per action, each a small ``_do_<name>`` method that calls
library code. ``revoke`` is stored (it reaches workers that start later);
``shutdown`` and ``rate_limit`` are remote-control broadcasts answered by
running workers (``inspection.broadcast``), Celery's as well as ours.
``add_consumer``, ``cancel_consumer``, ``time_limit`` and pool grow/shrink
are not built yet.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from ...conf import settings


class Command(BaseCommand):
    help = "Control workers: revoke tasks, shut workers down, change a task's rate limit."

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
        shutdown = commands.add_parser("shutdown", help="warm shutdown of running workers (as SIGTERM)")
        rate = commands.add_parser("rate_limit", help="change a task's rate limit in running workers, until "
                                                      "they restart ('10/s', '100/m'; 0 removes it)")
        rate.add_argument("task_name")
        rate.add_argument("rate")
        for parser_ in (shutdown, rate):
            parser_.add_argument("-d", "--destination", action="append", default=[],
                                 help="only this worker (repeat, or comma-separated; %%h is this host)")
            parser_.add_argument("-t", "--timeout", type=float, default=1.0, help="seconds to wait for replies")

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

    def _do_shutdown(self, options):
        self._broadcast("shutdown", {}, options)

    def _do_rate_limit(self, options):
        self._broadcast("rate_limit", {"task_name": options["task_name"], "rate_limit": options["rate"]}, options)

    def _broadcast(self, method: str, arguments: dict, options: dict) -> None:
        from ...inspection import broadcast

        if options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds")
        names = [name for value in options["destination"] for name in value.split(",") if name]
        replies = broadcast(method, arguments, names or None, options["timeout"])
        refused = []
        for hostname in sorted(replies.answers):
            answer = replies.answers[hostname]
            status = "OK" if isinstance(answer, dict) and "ok" in answer else "ERROR"
            self.stdout.write(f"-> {hostname}: {status} {json.dumps(answer, default=str)}")
            if status != "OK":
                refused.append(hostname)
        for hostname in replies.silent:
            self.stderr.write(f"-> {hostname}: no reply within {options['timeout']:g}s")
        if not replies.answers:
            raise CommandError(f"no worker replied within {options['timeout']:g}s", returncode=1)
        if replies.silent or refused:
            raise CommandError(f"not done by: {', '.join(replies.silent + refused)}", returncode=1)
