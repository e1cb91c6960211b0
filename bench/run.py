"""``make bench``: django-tasks-q next to Celery, Huey, RQ and Dramatiq, on the same servers, in one run.

    .venv/bin/python bench/run.py [--tasks 20000] [--runs 3] [--only drain,enqueue,...]

Starts a private redis-server (and, for the ``prefork2`` row, a second one for its
``incr`` task's counter; for the ``amqp`` row, a private RabbitMQ;
for ``pgresults``, ``django2`` and ``scale``, a private PostgreSQL) on free
loopback ports with ``tests/servers.py``, measures every selected row
``--runs`` times, the systems of a row one after another within each run so
that the machine's noise falls on all of them alike, and prints the medians,
the ratios against the targets of the issue (PASS/FAIL), and the workers' CPU
seconds per task, which noise moves less than wall-clock rates.
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import measure, measure_db, report  # noqa: E402
from bench.measure_db import Database  # noqa: E402

ROWS = ("drain", "drain2", "prefork2", "enqueue", "bulk", "roundtrip", "amqp", "amqp-roundtrip", "rss", "pgresults",
        "django2", "scale")
#: The amqp-roundtrip row: (label, system, extra); results in Redis for every system.
AMQP_ROUNDTRIP = (("ours", "ours", {}), ("ours-prefork", "ours", {"pool": "prefork", "concurrency": 2}),
                  ("ours-no-confirms", "ours", {"TASKS_Q_BROKER_TRANSPORT_OPTIONS": '{"confirm_publish": false}'}),
                  ("dramatiq", "dramatiq", {}))
#: The prefork2 row: (label, system, pool, concurrency); ours -P solo is the one-process reference.
PREFORK2 = (("ours-prefork", "ours", "prefork", 2), ("ours-prefork4", "ours", "prefork", 4),
            ("ours-solo", "ours", "solo", 1),
            ("celery", "celery", "prefork", 2), ("huey", "huey", "process", 2))
#: Tasks queued behind the scale row's timed window in its "few" case.
SCALE_FEW = 1000


@dataclass
class Databases:
    """The databases of the rows that need one; ``None`` where no selected row does."""

    results: Database | None = None  # PostgreSQL, with django-celery-results' tables too (pgresults)
    broker_pg: Database | None = None  # PostgreSQL for the django:// broker (django2, scale)
    broker_sqlite: Database | None = None  # SQLite for the django:// broker (django2)


def flush(redis_url: str) -> None:
    """Empty the private Redis server: every measurement starts from nothing queued."""
    import redis

    redis.Redis.from_url(redis_url).flushall()


def measure_run(rows: list[str], redis_url: str, amqp_url: str | None, n: int, roundtrips: int,
                figures: dict[tuple[str, str], list[dict]], databases: Databases, args: argparse.Namespace,
                counter_url: str | None = None) -> None:
    """One run of every selected row; appends one dict per (row, system) to ``figures``."""

    def record(row: str, system: str, call, *args, **kwargs) -> None:
        """Measure and keep the figures; a failed measurement is reported and the run goes on."""
        try:
            result = call(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            print(f"  {row:<9} {system:<16} FAILED: {str(exc)[-2000:]}", flush=True)
            return
        figures.setdefault((row, system), []).append(result)
        shown = ", ".join(f"{key} {value:,.2f}" for key, value in result.items())
        print(f"  {row:<9} {system:<16} {shown}", flush=True)

    def on_redis(row: str, system: str, call, *args, **kwargs) -> None:
        flush(redis_url)
        record(row, system, call, system, redis_url, *args, **kwargs)

    if "drain" in rows or "drain2" in rows:
        for system in ("ours", "celery", "huey", "rq") if "drain" in rows else ("ours",):
            on_redis("drain", system, measure.drain, n)
    if "drain2" in rows:
        flush(redis_url)
        record("drain2", "ours", measure.drain_two_solo, redis_url, n)
        flush(redis_url)
        record("drain2", "prefork", measure.drain, "ours", redis_url, n, pool="prefork", concurrency=2)
    if "prefork2" in rows and counter_url:
        results = redis_url.rsplit("/", 1)[0] + "/1"
        for task in ("noop", "incr"):
            for label, system, pool, concurrency in PREFORK2:
                flush(redis_url)
                record(f"prefork2-{task}", label, measure.drain_stored, system, redis_url, results, counter_url, n,
                       task, pool, concurrency)
    if "enqueue" in rows:
        for system in ("ours", "celery", "huey"):
            on_redis("enqueue", system, measure.enqueue, n)
    if "bulk" in rows:
        for system in ("ours", "celery", "rq"):
            on_redis("bulk", system, measure.bulk, n)
    if "roundtrip" in rows:
        results = redis_url.rsplit("/", 1)[0] + "/1"
        for label, system, extra in (("ours", "ours", {}), ("ours-prefork", "ours", {"pool": "prefork",
                                                                                      "concurrency": 2}),
                                     ("celery", "celery", {}), ("huey", "huey", {}),
                                     ("huey-notify", "huey", {"BENCH_HUEY_NOTIFY": "1"})):
            flush(redis_url)
            record("roundtrip", label, measure.roundtrip, system, redis_url, results, roundtrips, **extra)
    if "amqp" in rows and amqp_url:
        for system in ("ours", "celery", "dramatiq"):
            record("amqp", system, measure.drain, system, amqp_url, n)
    if "amqp-roundtrip" in rows and amqp_url:
        results = redis_url.rsplit("/", 1)[0] + "/1"
        for label, system, extra in AMQP_ROUNDTRIP:
            flush(redis_url)
            record("amqp-roundtrip", label, measure.roundtrip, system, amqp_url, results, roundtrips, **extra)
    if "rss" in rows:
        for pool, concurrency in (("solo", 1), ("prefork", 2)):
            for system in ("ours", "celery", "celery-site", "celery-plain"):
                on_redis(f"rss-{pool}", system, measure.idle_memory, pool, concurrency)
    if "pgresults" in rows:
        for system in ("ours", "celery-django"):
            on_redis("pgresults", system, measure_db.drain_with_results, n, databases.results)
    if "django2" in rows:
        for label, database in (("pg", databases.broker_pg), ("sqlite", databases.broker_sqlite)):
            for pool in ("prefork", "solo2"):
                record(f"django2-{label}", pool, measure_db.drain_embedded, n, database, pool == "solo2")
    if "scale" in rows:
        for size, behind in (("small", SCALE_FEW), ("large", args.scale)):
            flush(redis_url)
            record(f"scale-{size}", "redis", measure_db.scale, redis_url, n, behind, args.scale_sends,
                   shallow_queue="bench-shallow" if size == "large" else None)
        if args.scale_db:
            for size, behind in (("small", SCALE_FEW), ("large", args.scale_db)):
                record(f"scale-{size}", "django-pg", measure_db.scale, "django://", n, behind, args.scale_sends,
                       databases.broker_pg)
        # parked eta tasks: a window of n comes due among few or very many parked ones that are not due
        for size, parked in (("small", SCALE_FEW), ("large", args.scale)):
            flush(redis_url)
            record(f"scale-eta-{size}", "redis", measure_db.parked_release, redis_url, n, parked)
        if args.scale_db:
            for size, parked in (("small", SCALE_FEW), ("large", args.scale_db)):
                record(f"scale-eta-{size}", "django-pg", measure_db.parked_release, "django://", n, parked,
                       databases.broker_pg)
    flush(redis_url)


def open_databases(rows: list[str], postgres_server, sqlite_path: str, args: argparse.Namespace) -> Databases:
    """Create and migrate the databases the selected rows need (PostgreSQL ones on the private server)."""
    from tests.servers import create_database

    databases = Databases()
    url = postgres_server.url if postgres_server is not None else ""
    pid = postgres_server.postmaster_pid if postgres_server is not None else None
    if "pgresults" in rows:
        databases.results = Database("PostgreSQL", url=create_database(url, "bench_results"), server_pid=pid)
        databases.results.migrate("bench.peers.celery_django_settings")  # ours' tables and Celery's
    if "django2" in rows or ("scale" in rows and args.scale_db):
        databases.broker_pg = Database("PostgreSQL", url=create_database(url, "bench_broker"), server_pid=pid)
        databases.broker_pg.migrate()
    if "django2" in rows:
        databases.broker_sqlite = Database("SQLite", path=sqlite_path)
        databases.broker_sqlite.migrate()
    return databases


def needs_postgres(rows: list[str], args: argparse.Namespace) -> bool:
    return "pgresults" in rows or "django2" in rows or ("scale" in rows and bool(args.scale_db))


def machine(redis_server, rabbitmq_server, postgres_server=None) -> list[str]:
    """The facts a reader needs to compare figures: CPUs, Python, servers, library versions."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    redis_version = subprocess.run([redis_server._find_binary(), "--version"], capture_output=True,
                                   text=True).stdout.split()[2].removeprefix("v=")
    rabbit_version = "not started"
    if rabbitmq_server is not None:
        rabbit_version = rabbitmq_server._cli("rabbitmqctl", "-q", "version").stdout.strip()
    postgres_version = "not started"
    if postgres_server is not None:
        postgres_version = postgres_server._run("postgres", "--version").stdout.split()[2]
    libraries = ", ".join(f"{name} {version(name)}"
                          for name in ("django-tasks-q", "celery", "huey", "rq", "dramatiq", "redis", "hiredis",
                                       "django-celery-results", "psycopg", "Django"))
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    source = f"{ROOT} at {git.stdout.strip()}" if git.returncode == 0 else f"{ROOT} (not a git checkout)"
    return [f"machine: {os.cpu_count()} CPUs, {model}; Linux {platform.release()}; django-tasks-q from {source}",
            f"python {platform.python_version()}; redis-server {redis_version}; rabbitmq {rabbit_version}; "
            f"postgresql {postgres_version}",
            f"libraries: {libraries}"]


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per drain/enqueue/bulk measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs; every figure is the median over them")
    parser.add_argument("--roundtrips", type=int, default=0, help="round trips per run (default: tasks / 40)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows out of {','.join(ROWS)}")
    parser.add_argument("--scale", type=int, default=1_000_000,
                        help="scale row: tasks queued behind the timed window on Redis (against 1,000)")
    parser.add_argument("--scale-db", type=int, default=200_000,
                        help="scale row: the same on django:// PostgreSQL (0: leave it out)")
    parser.add_argument("--scale-sends", type=int, default=5000, help="scale row: delay() calls timed")
    args = parser.parse_args()
    rows = [row.strip() for row in args.only.split(",") if row.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    roundtrips = args.roundtrips or max(50, args.tasks // 40)

    from tests.servers import PostgresServer, RabbitMQServer, RedisServer

    database = tempfile.mktemp(prefix="bench-", suffix=".sqlite3")
    os.environ["TESTPROJECT_SQLITE"] = database  # ours: the ORM tables (the marker's result, the worker's rows)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True,
                   env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"})
    broker_sqlite = tempfile.mktemp(prefix="bench-broker-", suffix=".sqlite3")
    redis_server, rabbitmq_server, postgres_server = RedisServer(), None, None
    counter_server = RedisServer() if "prefork2" in rows else None
    figures: dict[tuple[str, str], list[dict]] = {}
    started = time.monotonic()
    try:
        redis_url = redis_server.start()
        counter_url = counter_server.start() if counter_server is not None else None
        amqp_url = None
        if "amqp" in rows:
            rabbitmq_server = RabbitMQServer()
            amqp_url = rabbitmq_server.start()
        if needs_postgres(rows, args):
            postgres_server = PostgresServer()
            postgres_server.start()
        databases = open_databases(rows, postgres_server, broker_sqlite, args)
        header = machine(redis_server, rabbitmq_server, postgres_server)
        print("\n".join(header), flush=True)
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs}", flush=True)
            measure_run(rows, redis_url, amqp_url, args.tasks, roundtrips, figures, databases, args, counter_url)
    finally:
        if postgres_server is not None:
            postgres_server.stop()
        if rabbitmq_server is not None:
            rabbitmq_server.stop()
        redis_server.stop()
        if counter_server is not None:
            counter_server.stop()
        for base in (database, broker_sqlite):
            for path in (base, base + "-wal", base + "-shm"):
                Path(path).unlink(missing_ok=True)
    medians = {key: {name: statistics.median(result[name] for result in results) for name in results[0]}
               for key, results in figures.items()}
    for key, results in figures.items():  # every "database is locked" counts, in any run
        if "locked" in results[0]:
            medians[key]["locked_total"] = sum(result["locked"] for result in results)
    for prefix in ("scale", "scale-eta"):  # scale: many over few, run by run (measured back to back), then the median
        for broker in ("redis", "django-pg"):
            many, few = figures.get((f"{prefix}-large", broker), []), figures.get((f"{prefix}-small", broker), [])
            if many and len(many) == len(few):
                for metric in ("cpu_ms", "ms_per_task", "enqueue_us", "server_cpu_ms"):
                    if metric in many[0]:
                        medians[(f"{prefix}-large", broker)][f"{metric}_ratio"] = statistics.median(
                            large[metric] / small[metric] for large, small in zip(many, few))
    print(f"\n{time.strftime('%Y-%m-%d')}, {args.tasks} tasks per measurement, {roundtrips} round trips, "
          f"median of {args.runs} run(s), {time.monotonic() - started:.0f} s in all")
    print("\n".join(header))
    report.show(medians, rows)


if __name__ == "__main__":
    main()
