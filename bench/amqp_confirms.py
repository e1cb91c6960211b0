"""Sending to RabbitMQ with publisher confirms: ours against the floor and against Celery, on one node.

    .venv/bin/python bench/amqp_confirms.py [--tasks 2000] [--runs 3]

Starts a private RabbitMQ (``tests/servers.py``) and, in each run, measures one after another:

* **floor**: a bare py-amqp publisher, a persistent message to a durable queue, waiting for each
  confirm -- what one confirmed send costs at least on this node (issue 23: one ``delay()`` with
  confirms within 1.2x of it);
* **ours delay()**: one ``noop.delay()`` per task (confirms on, our default);
* **ours delay_many()**: the same tasks in one call, each batch's confirms read after it;
* **ours delay_on_commit()**: the same tasks registered in one transaction, sent after its commit
  (``core/commit_batch.py``: as ``delay_many()`` sends them);
* **Celery delay()**: one ``noop.delay()`` per task (Celery's default: no confirms).

Prints tasks per second (medians over runs) and the ratios the issue sets: ours ``delay()`` against
the floor, ours ``delay_many()`` against Celery's one by one (target >= 20). Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.workers import client, environment  # noqa: E402
from tests.servers import RabbitMQServer  # noqa: E402

FLOOR_QUEUE = "bench-floor"


def floor(url: str, n: int) -> float:
    """Seconds for ``n`` confirmed persistent publishes by py-amqp alone, one confirm waited for each."""
    import amqp

    host = url.split("@", 1)[1].split("/", 1)[0]
    with amqp.Connection(host, userid="guest", password="guest", confirm_publish=True) as connection:
        channel = connection.channel()
        channel.queue_declare(FLOOR_QUEUE, durable=True, auto_delete=False)
        body = b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'

        def send() -> None:
            channel.basic_publish(amqp.Message(body, delivery_mode=2, content_type="application/json"),
                                  exchange="", routing_key=FLOOR_QUEUE)

        send()  # untimed, like every first send
        started = time.perf_counter()
        for _ in range(n):
            send()
        seconds = time.perf_counter() - started
        channel.queue_purge(FLOOR_QUEUE)
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    database = tempfile.mktemp(prefix="bench-", suffix=".sqlite3")
    os.environ["TESTPROJECT_SQLITE"] = database
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True,
                   env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"})
    server = RabbitMQServer()
    url = server.start()
    try:
        env = environment(url)
        rates: dict[str, list[float]] = {}
        for _ in range(args.runs):
            figures = {
                "floor: py-amqp, confirm per message": floor(url, args.tasks),
                "ours delay()": client("ours", env, "enqueue", args.tasks)["seconds"],
                "ours delay_many()": client("ours", env, "bulk", args.tasks)["seconds"],
                "ours delay_on_commit(), one transaction": client("ours", env, "on_commit", args.tasks)["seconds"],
                "Celery delay() (no confirms)": client("celery", env, "enqueue", args.tasks)["seconds"],
            }
            for name, seconds in figures.items():
                rates.setdefault(name, []).append(args.tasks / seconds)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        print(f"RabbitMQ, {args.tasks:,} tasks per measurement, median of {args.runs} runs")
        for name, rate in medians.items():
            print(f"  {name:38} {rate:10,.0f}/s")
        single = medians["floor: py-amqp, confirm per message"] / medians["ours delay()"]
        bulk = medians["ours delay_many()"] / medians["Celery delay() (no confirms)"]
        verdict = "PASS" if single <= 1.2 else "FAIL"
        print(f"  one delay() takes {single:.2f}x the floor's time (target <= 1.2): {verdict}")
        print(f"  delay_many() is {bulk:.1f}x Celery's one by one (target >= 20): {'PASS' if bulk >= 20 else 'FAIL'}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
