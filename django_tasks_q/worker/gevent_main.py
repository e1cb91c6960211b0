"""Entry point that monkey-patches with gevent, then runs the original command line.

``taskworker -P gevent`` re-executes itself through this file
(``python -c "<run this file>" manage.py taskworker -P gevent ...``) because
gevent must patch ``socket``, ``threading``, ``time`` and the rest before
Django, the database drivers or the broker client import them; by the time
a management command runs, they all have. The file is run by path, not as
``-m django_tasks_q.worker.gevent_main``: importing the package would import
Django and kombu before the patch.

``argv[0]`` must be a Python file to run as ``__main__``: ``manage.py``,
``django-admin``'s script, or ``django/__main__.py`` (what ``python -m
django`` leaves in ``sys.argv[0]``).
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402 -- after patching, on purpose
import runpy  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str]) -> None:
    """Run ``argv`` (the worker's original ``sys.argv``) as if Python had been started with it."""
    if not argv or not os.path.isfile(argv[0]):
        sys.exit(f"gevent_main: {argv[0] if argv else '(nothing)'!r} is not a script to run; "
                 f"start the worker as `python manage.py taskworker -P gevent`")
    script = argv[0]
    sys.argv = list(argv)
    # what `python manage.py` puts first on the path; `python -m django` (argv[0] is django/__main__.py) put cwd
    package_main = os.path.basename(script) == "__main__.py"
    sys.path.insert(0, "" if package_main else os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])  # sys.argv[0] is "-c" (or this file)
