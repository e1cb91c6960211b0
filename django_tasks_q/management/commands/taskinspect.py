"""``manage.py taskinspect QUESTION``: ask running workers what they are doing.

The same questions as ``celery inspect``, over the same mailbox, so it
answers for our workers and Celery's. Exit status 1 when nobody answered,
or when a worker named with ``-d`` stayed silent (it is named), or (with
``SIGNING_KEY`` set) a reply was not signed with our key.

``active``, ``reserved`` and ``scheduled`` leave task arguments out unless
asked, with Celery's ``safe`` flag: ``--safe=no`` for the arguments as sent,
``--safe=yes`` for their shortened reprs.
"""

import argparse
import json

from django.core.management.base import BaseCommand, CommandError

from ...inspection import QUESTIONS, ask


class Command(BaseCommand):
    help = "Ask running workers: ping, active, reserved, scheduled, registered, stats, active_queues, revoked, conf."

    def add_arguments(self, parser):
        parser.add_argument("question", choices=QUESTIONS)
        parser.add_argument("-d", "--destination", action="append", default=[],
                            help="ask only this worker (repeat, or separate names with commas; %%h is this host)")
        parser.add_argument("-t", "--timeout", type=float, default=1.0, help="seconds to wait for replies")
        parser.add_argument("--json", action="store_true", help="print the replies as one JSON object")
        parser.add_argument("--safe", type=_yes_no, default=None, metavar="yes|no",
                            help="active, reserved, scheduled: no = include task arguments as sent, yes = their "
                                 "reprs; left out when not given (they may hold secrets)")

    def handle(self, *args, **options):
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds")
        names = [name for value in options["destination"] for name in value.split(",") if name]
        arguments = {} if options["safe"] is None else {"safe": options["safe"]}
        replies = ask(options["question"], names or None, options["timeout"], arguments)
        if options["json"]:
            self.stdout.write(json.dumps(replies.answers, indent=2, sort_keys=True, default=str))
        else:
            for hostname in sorted(replies.answers):
                self.stdout.write(f"-> {hostname}: OK")
                self.stdout.write(_indent(json.dumps(replies.answers[hostname], indent=2, default=str)))
        for hostname in replies.silent:
            self.stderr.write(f"-> {hostname}: no reply within {options['timeout']:g}s")
        for hostname in replies.unverified:
            self.stderr.write(f"-> {hostname}: reply not signed with SIGNING_KEY, ignored: "
                              f"{json.dumps(replies.unverified[hostname], default=str)}")
        if not replies.answers and not replies.unverified:
            raise CommandError(f"no worker replied within {options['timeout']:g}s", returncode=1)
        if replies.silent:
            raise CommandError(f"{len(replies.silent)} worker(s) did not reply: {', '.join(replies.silent)}",
                               returncode=1)
        if replies.unverified:
            raise CommandError(f"unsigned or badly signed replies from: {', '.join(sorted(replies.unverified))}",
                               returncode=1)


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "y", "true", "1", "on"):
        return True
    if value in ("no", "n", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"yes or no, not {text!r}")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
