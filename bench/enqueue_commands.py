"""What the Redis commands of one enqueue cost: ours (the message, a wake token and its trim) against
one LPUSH (what a Celery or Huey enqueue writes) and against the three folded into one Lua script.

    .venv/bin/python bench/enqueue_commands.py [--messages 30000] [--rounds 5]

Starts a private redis-server (``tests/servers.py``), sends each variant as one write and reads its
replies (one round trip, as ``delay()`` does) ``--messages`` times, the variants in turn within each
round, and prints the medians over rounds: the caller's wall microseconds per enqueue and the
redis-server's CPU microseconds per enqueue (from ``/proc``). Issue 23 asked whether folding the three
commands into one pays; this is the measurement behind the answer in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from django_tasks_q.broker.transport.redis_sends import WAKE_CAP, WAKE_PREFIX, resp  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

#: a message of the size of a small task's kombu envelope
MESSAGE = b'{"body": "' + b"x" * 600 + b'", "headers": {}}'
FOLDED = ("redis.call('LPUSH', KEYS[1], ARGV[1]) redis.call('LPUSH', KEYS[2], 1) "
          f"redis.call('LTRIM', KEYS[2], 0, {WAKE_CAP - 1}) return 1")


def variants(sha: str) -> dict[str, tuple[bytes, int]]:
    """name -> (the packed commands of one enqueue, the number of replies)."""
    queue, wake = "bench", WAKE_PREFIX + "bench"
    return {
        "ours: LPUSH + wake LPUSH + LTRIM": (resp("LPUSH", queue, MESSAGE) + resp("LPUSH", wake, 1)
                                             + resp("LTRIM", wake, 0, WAKE_CAP - 1), 3),
        "the three in one EVALSHA": (resp("EVALSHA", sha, 2, queue, wake, MESSAGE), 1),
        "peers: one LPUSH": (resp("LPUSH", queue, MESSAGE), 1),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer()
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        connection = client.connection_pool.make_connection()
        connection.connect()
        chosen = variants(client.script_load(FOLDED))
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, (packed, replies) in chosen.items():
                client.flushall()
                cpu, began = cpu_seconds(server.proc.pid), time.perf_counter()
                for _ in range(args.messages):
                    connection.send_packed_command([packed], check_health=False)
                    for _ in range(replies):
                        connection.read_response()
                wall, cpu = time.perf_counter() - began, cpu_seconds(server.proc.pid) - cpu
                figures[name].append((1e6 * wall / args.messages, 1e6 * cpu / args.messages))
        print(f"{args.messages:,} enqueues per variant, median of {args.rounds} rounds")
        for name, values in figures.items():
            print(f"  {name:34} caller {statistics.median(v[0] for v in values):6.1f} us   "
                  f"redis-server CPU {statistics.median(v[1] for v in values):5.2f} us")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
