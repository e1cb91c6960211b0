"""``manage.py taskcontrol``: steer workers.

One sub-command per action, each a small ``_do_<name>`` method that calls
library code. ``revoke`` is stored (it reaches workers that start later);
``shutdown``, ``rate_limit``, ``add_consumer``, ``cancel_consumer``,
``time_limit``, ``pool_grow`` and ``pool_shrink`` are remote-control
broadcasts answered by running workers (``inspection.broadcast``), Celery's
as well as ours, with Celery's command names and arguments. Exit status 1
when no worker answered, a worker named with ``-d`` stayed silent, or any
worker refused. With ``SIGNING_KEY`` set the broadcasts are signed and a
reply not signed with the key counts as a refusal.
"""

import argparse
import json
import math

from django.core.management.base import BaseCommand, CommandError

from ...conf import settings


class Command(BaseCommand):
    help = ("Control workers: revoke tasks, shut workers down, change a task's rate or time limits, "
            "add or cancel queues, grow or shrink pools.")

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
        add = commands.add_parser("add_consumer", help="running workers start consuming QUEUE, until they restart")
        add.add_argument("queue")
        cancel = commands.add_parser("cancel_consumer",
                                     help="running workers stop consuming QUEUE (tasks already received still run)")
        cancel.add_argument("queue")
        limits = commands.add_parser("time_limit", help="new soft [and hard] time limits, in seconds, for tasks of "
                                                        "one name started from now on, until workers restart "
                                                        "(no HARD: no hard limit; 0: none)")
        limits.add_argument("task_name")
        limits.add_argument("soft", type=_seconds)
        limits.add_argument("hard", type=_seconds, nargs="?", default=None)
        grow = commands.add_parser("pool_grow", help="N more processes or threads in each worker's pool (prefork, "
                                                     "threads)")
        shrink = commands.add_parser("pool_shrink", help="N fewer processes or threads (idle ones stop now, busy ones "
                                                         "when their task ends)")
        for parser_ in (grow, shrink):
            parser_.add_argument("n", type=_count, nargs="?", default=1, metavar="N", help="how many (default 1)")
        for parser_ in (shutdown, rate, add, cancel, limits, grow, shrink):
            parser_.add_argument("-d", "--destination", action="append", default=[],
                                 help="only this worker (repeat, or comma-separated; %%h is this host)")
            parser_.add_argument("-t", "--timeout", type=float, default=1.0, help="seconds to wait for replies")
            parser_.add_argument("--json", action="store_true", help="print the replies as one JSON object")

    def handle(self, *args, **options):
        return getattr(self, f"_do_{options['action']}")(options)

    def _do_revoke(self, options):
        from ...core.revoking import parse_signal, revoke

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

    def _do_add_consumer(self, options):
        self._broadcast("add_consumer", {"queue": options["queue"]}, options)

    def _do_cancel_consumer(self, options):
        self._broadcast("cancel_consumer", {"queue": options["queue"]}, options)

    def _do_time_limit(self, options):
        arguments = {"task_name": options["task_name"], "soft": options["soft"], "hard": options["hard"]}
        self._broadcast("time_limit", arguments, options)

    def _do_pool_grow(self, options):
        self._broadcast("pool_grow", {"n": options["n"]}, options)

    def _do_pool_shrink(self, options):
        self._broadcast("pool_shrink", {"n": options["n"]}, options)

    def _broadcast(self, method: str, arguments: dict, options: dict) -> None:
        from ...inspection import broadcast

        if options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds")
        names = [name for value in options["destination"] for name in value.split(",") if name]
        replies = broadcast(method, arguments, names or None, options["timeout"])
        refused = [hostname for hostname, answer in sorted(replies.answers.items())
                   if not (isinstance(answer, dict) and "ok" in answer)]
        for hostname in sorted(replies.unverified):
            self.stderr.write(f"-> {hostname}: reply not signed with SIGNING_KEY, ignored: "
                              f"{json.dumps(replies.unverified[hostname], default=str)}")
            refused.append(hostname)
        if options.get("json"):
            self.stdout.write(json.dumps(replies.answers, indent=2, sort_keys=True, default=str))
        else:
            for hostname in sorted(replies.answers):
                status = "ERROR" if hostname in refused else "OK"
                self.stdout.write(f"-> {hostname}: {status} {json.dumps(replies.answers[hostname], default=str)}")
        for hostname in replies.silent:
            self.stderr.write(f"-> {hostname}: no reply within {options['timeout']:g}s")
        if not replies.answers and not replies.unverified:
            raise CommandError(f"no worker replied within {options['timeout']:g}s", returncode=1)
        if replies.silent or refused:
            raise CommandError(f"not done by: {', '.join(replies.silent + refused)}", returncode=1)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a number of seconds, not negative: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value
