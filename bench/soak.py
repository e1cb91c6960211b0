"""Soak test: many tasks, workers SIGKILLed every few seconds, the broker killed and restarted.

Not part of ``make test``. It prints how many tasks were lost (never ran)
and how many ran more than once::

    .venv/bin/python bench/soak.py [--tasks 100000] [--broker redis|amqp|django] [--kill-every 5]

Set-up: two ``manage.py taskworker -P prefork -c 2`` processes with
``ACKS_LATE`` (an unacked task is redelivered when its worker dies), results
not stored. Each task appends its number to a shared file, so the file is
the ground truth of what ran. While the sender enqueues, one worker is
SIGKILLed (its whole process group, no warm shutdown) every ``--kill-every``
seconds and started again; the broker is SIGKILLed and restarted twice
(Redis runs with ``appendfsync always``, RabbitMQ queues are durable and
messages persistent, so an acknowledged publish survives). A send that
raises ``BrokerUnavailable`` while the broker is down is retried by the
sender: the broker never acknowledged it.

Lost must be 0. Duplicates are expected with ``acks_late`` (a task that
finished but whose ack died with its worker runs again) and are counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")


class Broker:
    """A real broker server from ``tests/servers.py`` that can crash (SIGKILL) and start again with its data."""

    def __init__(self, name: str) -> None:
        from tests.servers import RabbitMQServer, RedisServer

        # Redis: fsync every write (appendfsync always), so a crash loses nothing it acknowledged
        self.server = RedisServer(appendonly=True) if name == "redis" else RabbitMQServer()
        self.url = self.server.start()

    def crash_and_restart(self) -> None:
        self.server.crash()
        time.sleep(2)
        self.server.start_again()

    def stop(self) -> None:
        self.server.stop()


class NoBroker:
    """``django://``: the broker is the SQLite database; it is not restarted."""

    url = "django://"

    def crash_and_restart(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Worker:
    def __init__(self, name: str, env: dict[str, str], logdir: str) -> None:
        self.name = name
        self.env = env
        self.log = open(os.path.join(logdir, f"{name}.log"), "a")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "taskworker", "-P", "prefork", "-c", "2", "-Q", "soak", "-n",
             f"{self.name}@%h", "-l", "WARNING"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def ran(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--broker", choices=["redis", "amqp", "django"], default="redis")
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--broker-restarts", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="soak-")
    db_path = os.path.join(workdir, "db.sqlite3")
    runs_path = Path(workdir) / "runs"
    broker = NoBroker() if args.broker == "django" else Broker(args.broker)
    env = {**os.environ, "TESTPROJECT_SQLITE": db_path, "TASKS_Q_BROKER_URL": broker.url,
           "TASKS_Q_ACKS_LATE": "true", "TASKS_Q_RESULT_BACKEND": "null", "TASKS_Q_WORKER_HEARTBEAT": "0",
           "TASKS_Q_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 10, "unacked_restore_throttle": 1, '
                                               '"unacked_mutex_expire": 10}',
           "PYTHONUNBUFFERED": "1"}
    os.environ.update({k: v for k, v in env.items() if k.startswith(("TASKS_Q_", "TESTPROJECT_"))})
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)

    import django

    django.setup()
    from django_tasks_q.broker import connection
    from django_tasks_q.exceptions import BrokerUnavailable
    from testproject.videos.tasks import mark

    workers = [Worker(f"soak{n}", env, workdir) for n in range(2)]
    for worker in workers:
        worker.start()
    sent = 0
    send_retries = 0
    stop = threading.Event()

    def send_all() -> None:
        nonlocal sent, send_retries
        for number in range(args.tasks):
            while True:
                try:
                    mark.apply_async((str(runs_path), str(number)), queue="soak")
                    break
                except BrokerUnavailable:
                    send_retries += 1
                    connection.reset()
                    time.sleep(0.5)
            sent += 1

    sender = threading.Thread(target=send_all, daemon=True)
    started = time.monotonic()
    sender.start()
    kills = restarts = 0
    restart_at = [started + 10 + 15 * n for n in range(args.broker_restarts)]
    next_kill = started + args.kill_every
    last_progress, last_count = time.monotonic(), 0
    try:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            counts = ran(runs_path)
            if len(counts) != last_count:
                last_count, last_progress = len(counts), now
            if not sender.is_alive() and len(counts) >= args.tasks:
                break
            if now - last_progress > 120 or now - started > args.timeout:
                print("no progress for 120 s (or timeout): stopping", flush=True)
                break
            if sender.is_alive() or len(counts) < args.tasks:
                if now >= next_kill:
                    victim = workers[kills % len(workers)]
                    victim.kill()
                    victim.start()
                    kills += 1
                    next_kill = now + args.kill_every
                if restart_at and now >= restart_at[0] and args.broker != "django":
                    restart_at.pop(0)
                    broker.crash_and_restart()
                    restarts += 1
                    print(f"broker restarted ({restarts}) at {now - started:.0f}s; {len(counts)} tasks ran so far",
                          flush=True)
        elapsed = time.monotonic() - started
        time.sleep(3)  # late duplicates from the last redeliveries
        counts = ran(runs_path)
        if args.broker == "redis" and len(counts) < args.tasks:
            import redis

            client = redis.Redis.from_url(broker.url)
            print(f"left in redis: queue {client.llen('soak')}, unacked {client.hlen('unacked')}, "
                  f"unacked index {client.zcard('unacked_index')}, keys {sorted(client.keys())[:20]}")
    finally:
        stop.set()
        for worker in workers:
            worker.kill()
        broker.stop()
    distinct = len(counts)
    lost = args.tasks - len(set(counts) & {str(n) for n in range(args.tasks)})
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    print(f"\nsoak on {args.broker}: {args.tasks} tasks sent ({send_retries} sends retried while the broker was "
          f"down), 2 prefork workers, one SIGKILLed every {args.kill_every:.0f}s ({kills} kills), "
          f"broker killed and restarted {restarts} times")
    print(f"elapsed {elapsed:.0f}s   ran (distinct) {distinct}   lost = {lost}   "
          f"duplicates (ran again after a lost ack) = {duplicates}")
    print(f"logs: {workdir}")
    raise SystemExit(1 if lost else 0)


if __name__ == "__main__":
    main()
