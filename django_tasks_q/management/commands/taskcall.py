"""``manage.py taskcall NAME [--args JSON] [--kwargs JSON] [--queue Q] [--countdown S] [--wait]``.

Send a task by name from the shell (``celery call``): it need not be
importable here. Prints the task id; with ``--wait`` also its result, and
exits with status 1 when the task failed or did not finish in ``--timeout``.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from ...core.calling import send_task
from ...exceptions import TasksQError, TimeoutError


class Command(BaseCommand):
    help = "Send a task by name; optionally wait for its result."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the task's registered name, e.g. videos.tasks.compress")
        parser.add_argument("--args", dest="call_args", default="[]",
                            help='positional arguments as a JSON list, e.g. \'[1, "a"]\'')
        parser.add_argument("--kwargs", dest="call_kwargs", default="{}",
                            help='keyword arguments as a JSON object, e.g. \'{"x": 1}\'')
        parser.add_argument("--queue", default=None)
        parser.add_argument("--countdown", type=float, default=None, help="run no sooner than this many seconds")
        parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")

    def handle(self, *args, **options):
        call_args = _json_option(options["call_args"], "--args", list)
        call_kwargs = _json_option(options["call_kwargs"], "--kwargs", dict)
        sending = {k: options[k] for k in ("queue", "countdown") if options[k] is not None}
        try:
            result = send_task(options["name"], call_args, call_kwargs, **sending)
        except TasksQError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(result.id)
        if not options["wait"]:
            return
        try:
            value = result.get(timeout=options["timeout"])
        except TimeoutError as exc:
            raise CommandError(str(exc), returncode=1) from exc
        except Exception as exc:  # the task's own exception, re-raised by get()
            raise CommandError(f"task {result.id} ended {result.state}: {type(exc).__name__}: {exc}",
                               returncode=1) from exc
        self.stdout.write(json.dumps(value, default=str))


def _json_option(raw: str, option: str, kind: type) -> object:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CommandError(f"{option} is not valid JSON ({exc}): {raw!r}") from exc
    if not isinstance(value, kind):
        raise CommandError(f"{option} must be a JSON {'list' if kind is list else 'object'}, got {raw!r}")
    return value
