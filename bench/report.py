"""The targets of the issue, and the printed report: one line per target, then the same as a Markdown table."""

from __future__ import annotations

import operator

Key = tuple[str, str]  # (row, system)

#: (what, ours, metric, peer, peer's name, comparison of ours/peer, target)
TARGETS: list[tuple[str, Key, str, Key, str, str, float]] = [
    ("drain, Redis, 1 process, no results", ("drain", "ours"), "rate", ("drain", "celery"), "Celery -P solo", ">=", 5),
    ("drain, Redis, 1 process, no results", ("drain", "ours"), "rate", ("drain", "huey"), "Huey -w 1", ">=", 2),
    ("drain, Redis, 2 processes (two -P solo workers)", ("drain2", "ours"), "rate", ("drain", "ours"),
     "ours 1 process", ">=", 1.8),
    ("enqueue, one delay() per task", ("enqueue", "ours"), "rate", ("enqueue", "celery"), "Celery", ">=", 5),
    ("enqueue, one delay() per task", ("enqueue", "ours"), "rate", ("enqueue", "huey"), "Huey", ">=", 1.25),
    ("bulk enqueue, delay_many()", ("bulk", "ours"), "rate", ("bulk", "celery"), "Celery group().apply_async()",
     ">=", 20),
    ("bulk enqueue, delay_many()", ("bulk", "ours"), "rate", ("bulk", "rq"), "RQ enqueue_many()", ">=", 3),
    ("round trip delay() -> get(), p50", ("roundtrip", "ours"), "p50_ms", ("roundtrip", "celery"), "Celery",
     "<=", 0.5),
    ("round trip delay() -> get(), p50", ("roundtrip", "ours"), "p50_ms", ("roundtrip", "huey"), "Huey", "<", 1),
    ("round trip delay() -> get(), p99", ("roundtrip", "ours"), "p99_ms", ("roundtrip", "celery"), "Celery",
     "<=", 0.5),
    *[(f"round trip delay() -> get(), {metric[:3]}, ours {pool}", ("roundtrip", label), metric,
       ("roundtrip", "huey-notify"), "Huey notify_result=True", "<", 1)
      for label, pool in (("ours", "-P solo"), ("ours-prefork", "-P prefork -c 2")) for metric in ("p50_ms", "p99_ms")],
    ("drain, RabbitMQ, 1 process", ("amqp", "ours"), "rate", ("amqp", "celery"), "Celery -P solo", ">=", 4),
    ("drain, RabbitMQ, 1 process", ("amqp", "ours"), "rate", ("amqp", "dramatiq"), "Dramatiq -p 1 -t 1", ">=", 1.5),
    *[(f"round trip delay() -> get() on RabbitMQ, p50, ours {pool}", ("amqp-roundtrip", label), "p50_ms",
       ("amqp-roundtrip", "dramatiq"), "Dramatiq, Results middleware (no confirms)", "<=", 1)
      for label, pool in (("ours", "-P solo"), ("ours-prefork", "-P prefork -c 2"))],
    ("idle worker RSS, -P solo", ("rss-solo", "ours"), "rss_mib", ("rss-solo", "celery"),
     "Celery -P solo (fix-up: testproject settings)", "<=", 1),
    ("idle worker RSS, -P prefork -c 2", ("rss-prefork", "ours"), "rss_mib", ("rss-prefork", "celery"),
     "Celery -P prefork -c 2 (fix-up: testproject settings)", "<=", 1),
    ("idle worker RSS in a Django site (admin, sessions, messages), -P solo", ("rss-solo", "ours"), "rss_mib",
     ("rss-solo", "celery-site"), "Celery -P solo in a Django site", "<=", 1),
    ("idle worker RSS in a Django site (admin, sessions, messages), -P prefork -c 2", ("rss-prefork", "ours"),
     "rss_mib", ("rss-prefork", "celery-site"), "Celery -P prefork -c 2 in a Django site", "<=", 1),
    ("drain, Redis, 1 process, results in the ORM on PostgreSQL", ("pgresults", "ours"), "rate",
     ("pgresults", "celery-django"), "Celery -P solo + django-celery-results", ">=", 2),
    *[(f"drain, Redis, results in Redis, {what}: ours -P prefork -c 2", (f"prefork2-{task}", "ours-prefork"), "rate",
       (f"prefork2-{task}", peer), peer_name, ">=", target)
      for task, what in (("noop", "no-op"), ("incr", "one INCR per task"))
      for peer, peer_name, target in (("ours-solo", "ours -P solo (1 process)", 1.8),
                                      ("huey", "Huey -w 2 -k process", 1))],
    *[(f"drain, Redis, results in Redis, {what}: ours -P prefork -c 4 on 2 cores",
       (f"prefork2-{task}", "ours-prefork4"), "rate", (f"prefork2-{task}", "ours-prefork"), "ours -P prefork -c 2",
       ">=", 1)
      for task, what in (("noop", "no-op"), ("incr", "one INCR per task"))],
]

#: (what, keys whose best figure counts, metric, comparison, target): a figure of ours alone against a number.
ABSOLUTE: list[tuple[str, list[Key], str, str, float]] = [
    ("django:// broker, PostgreSQL, 2 processes, no results", [("django2-pg", "prefork"), ("django2-pg", "solo2")],
     "rate", ">=", 1000),
    ("django:// broker, SQLite, 2 processes, no results", [("django2-sqlite", "prefork"), ("django2-sqlite", "solo2")],
     "rate", ">=", 300),
    ('django:// broker, SQLite: "database is locked" in the workers\' logs (both pools, every run)',
     [("django2-sqlite", "prefork"), ("django2-sqlite", "solo2")], "locked", "<=", 0),
]

#: The scale row: (what, row, broker, metric) -- the figure of ``row``-large (many tasks queued or parked)
#: over the one of ``row``-small (1,000).
SCALE: list[tuple[str, str, str, str]] = [
    ("scale, Redis: drain, worker CPU per task", "scale", "redis", "cpu_ms"),
    ("scale, Redis: drain, Redis CPU per task", "scale", "redis", "server_cpu_ms"),
    ("scale, Redis: drain, wall time per task", "scale", "redis", "ms_per_task"),
    ("scale, Redis: enqueue, one delay()", "scale", "redis", "enqueue_us"),
    ("scale, django:// PostgreSQL: drain, worker CPU per task", "scale", "django-pg", "cpu_ms"),
    ("scale, django:// PostgreSQL: drain, PostgreSQL CPU per task", "scale", "django-pg", "server_cpu_ms"),
    ("scale, django:// PostgreSQL: drain, wall time per task", "scale", "django-pg", "ms_per_task"),
    ("scale, django:// PostgreSQL: enqueue, one delay()", "scale", "django-pg", "enqueue_us"),
    ("scale, Redis: release and run of due eta tasks, worker CPU per task", "scale-eta", "redis", "cpu_ms"),
    ("scale, Redis: release and run of due eta tasks, Redis CPU per task", "scale-eta", "redis", "server_cpu_ms"),
    ("scale, Redis: release and run of due eta tasks, wall time per task", "scale-eta", "redis", "ms_per_task"),
    ("scale, django:// PostgreSQL: release and run of due eta tasks, worker CPU per task", "scale-eta", "django-pg",
     "cpu_ms"),
    ("scale, django:// PostgreSQL: release and run of due eta tasks, PostgreSQL CPU per task", "scale-eta",
     "django-pg", "server_cpu_ms"),
    ("scale, django:// PostgreSQL: release and run of due eta tasks, wall time per task", "scale-eta", "django-pg",
     "ms_per_task"),
]
#: How many tasks the ``scale`` and ``scale-eta`` rows' "many" figures are for.
SCALE_NOUN = {"scale": "queued", "scale-eta": "parked"}
SCALE_TARGET = 1.10
POOLS = {"prefork": "-P prefork -c 2", "solo2": "two -P solo workers"}

#: (what, system, metric, another figure to show beside it or None, its name): no target.
EXTRAS: list[tuple[str, Key, str, Key | None, str]] = [
    ("drain, Redis, RQ SimpleWorker --burst", ("drain", "rq"), "rate", ("drain", "ours"), "ours"),
    ("drain, Redis, ours -P prefork -c 2 (two children, each consuming)", ("drain2", "prefork"), "rate",
     ("drain", "ours"), "ours 1 process"),
    ("round trip p50, Huey notify_result=True (not its default)", ("roundtrip", "huey-notify"), "p50_ms",
     ("roundtrip", "ours"), "ours"),
    ("round trip p99, Huey notify_result=True (not its default)", ("roundtrip", "huey-notify"), "p99_ms",
     ("roundtrip", "ours"), "ours"),
    ("round trip p99, Huey (default)", ("roundtrip", "huey"), "p99_ms", ("roundtrip", "ours"), "ours"),
    ("round trip p50 on RabbitMQ, ours -P solo with confirms off", ("amqp-roundtrip", "ours-no-confirms"), "p50_ms",
     ("amqp-roundtrip", "ours"), "ours"),
    ("enqueue while filling the RabbitMQ queue, Celery", ("amqp", "celery"), "enqueue_rate", ("amqp", "ours"), "ours"),
    ("enqueue while filling the RabbitMQ queue, Dramatiq", ("amqp", "dramatiq"), "enqueue_rate", ("amqp", "ours"),
     "ours"),
    ("idle worker PSS, -P solo, Celery", ("rss-solo", "celery"), "pss_mib", ("rss-solo", "ours"), "ours"),
    ("idle worker PSS, -P prefork -c 2, Celery", ("rss-prefork", "celery"), "pss_mib", ("rss-prefork", "ours"),
     "ours"),
    ("idle worker PSS, -P solo, Celery in a Django site", ("rss-solo", "celery-site"), "pss_mib", ("rss-solo", "ours"),
     "ours"),
    ("idle worker PSS, -P prefork -c 2, Celery in a Django site", ("rss-prefork", "celery-site"), "pss_mib",
     ("rss-prefork", "ours"), "ours"),
    ("idle worker RSS, -P solo, plain Celery (no DJANGO_SETTINGS_MODULE, no Django)", ("rss-solo", "celery-plain"),
     "rss_mib", ("rss-solo", "ours"), "ours"),
    ("idle worker RSS, -P prefork -c 2, plain Celery (no DJANGO_SETTINGS_MODULE, no Django)",
     ("rss-prefork", "celery-plain"), "rss_mib", ("rss-prefork", "ours"), "ours"),
    ("Redis commands per enqueued task, ours delay()", ("enqueue", "ours"), "commands_per_task", None, ""),
    ("Redis commands per enqueued task, Celery delay()", ("enqueue", "celery"), "commands_per_task", None, ""),
    ("Redis commands per enqueued task, Huey noop()", ("enqueue", "huey"), "commands_per_task", None, ""),
]

#: The prefork2 row's systems, as the report names them.
PREFORK2 = {"ours-prefork": "ours -P prefork -c 2", "ours-prefork4": "ours -P prefork -c 4",
            "ours-solo": "ours -P solo (1 process)",
            "celery": "Celery -P prefork -c 2", "huey": "Huey -w 2 -k process"}
PREFORK2_TASKS = {"noop": "no-op", "incr": "one Redis INCR on a separate server"}

#: (what, why): rows the report names although nothing measures them.
NOT_MEASURED: list[tuple[str, str]] = []

COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt}
UNITS = {"rate": "{:,.0f}/s", "enqueue_rate": "{:,.0f}/s", "p50_ms": "{:.2f} ms", "p99_ms": "{:.2f} ms",
         "rss_mib": "{:.1f} MiB", "pss_mib": "{:.1f} MiB", "cpu_ms": "{:.3f} ms", "ms_per_task": "{:.3f} ms",
         "server_cpu_ms": "{:.3f} ms", "start_late_ms": "{:.0f} ms",
         "enqueue_us": "{:.1f} µs", "locked": "{:.0f}", "fill_rate": "{:,.0f}/s", "stored": "{:,.0f}",
         "commands_per_task": "{:.2f}", "counted": "{:,.0f}"}


def show(medians: dict[Key, dict[str, float]], selected: list[str]) -> None:
    """Print every target of the ``selected`` rows, the extras, the CPU per task and what was not measured."""
    table = []
    print("\ntargets")
    for what, ours, metric, peer, peer_name, compare, target in TARGETS:
        if ours[0].split("-")[0] not in selected:
            continue
        if ours not in medians or peer not in medians:
            print(f"  {what} vs {peer_name}: not measured: the measurement failed (its error is above)")
            table.append(f"| {what} | | {peer_name} | | {compare} {target:g} | not measured: failed | |")
            continue
        mine, theirs = medians[ours][metric], medians[peer][metric]
        ratio = mine / theirs
        verdict = "PASS" if COMPARE[compare](ratio, target) else "FAIL"
        unit = UNITS[metric]
        line = (f"ours {unit.format(mine)}, {peer_name} {unit.format(theirs)}, ratio {ratio:.2f} "
                f"(target {compare} {target:g}) {verdict}")
        cpu = ""
        if "cpu_ms" in medians[ours] and "cpu_ms" in medians[peer]:
            mine_cpu, their_cpu = medians[ours]["cpu_ms"], medians[peer]["cpu_ms"]
            cpu = f"{mine_cpu:.3f} / {their_cpu:.3f} ms (x{their_cpu / mine_cpu:.2f})"
            line += f"; worker CPU per task ours {mine_cpu:.3f} ms, peer {their_cpu:.3f} ms"
        if "db_cpu_ms" in medians[ours] and "db_cpu_ms" in medians[peer]:
            line += (f"; PostgreSQL CPU per task ours {medians[ours]['db_cpu_ms']:.3f} ms, "
                     f"peer {medians[peer]['db_cpu_ms']:.3f} ms")
        print(f"  {what} vs {peer_name}: {line}")
        table.append(f"| {what} | {unit.format(mine)} | {peer_name}: {unit.format(theirs)} | {ratio:.2f} "
                     f"| {compare} {target:g} | {verdict} | {cpu} |")
    table += absolute(medians, selected) + scaled(medians, selected) + prefork2(medians, selected)
    print("\nfor information (no target)")
    for what, key, metric, other, other_name in EXTRAS:
        if key not in medians:
            continue
        unit = UNITS[metric]
        line = unit.format(medians[key][metric])
        if other is not None and other in medians:
            line += f" ({other_name} {unit.format(medians[other][metric])})"
        if "cpu_ms" in medians[key] and metric == "rate":
            line += f"; worker CPU per task {medians[key]['cpu_ms']:.3f} ms"
        print(f"  {what}: {line}")
        table.append(f"| {what} | | {line} | | | info | |")
    for (row, system), figures in sorted(medians.items()):
        for metric in ("fill_rate", "stored", "start_late_ms"):
            if metric in figures and row.split("-")[0] in ("pgresults", "django2", "scale"):
                line = f"{row} {system}: {metric} {UNITS[metric].format(figures[metric])}"
                print(f"  {line}")
                table.append(f"| {line} | | | | | info | |")
    print("\nworker CPU milliseconds per task (drain rows; the server's own CPU beside it where it was measured)")
    for (row, system), figures in sorted(medians.items()):
        if "cpu_ms" in figures:
            server = f", PostgreSQL {figures['db_cpu_ms']:.3f} ms" if "db_cpu_ms" in figures else ""
            if "server_cpu_ms" in figures:
                server = f", {'Redis' if system == 'redis' else 'PostgreSQL'} {figures['server_cpu_ms']:.3f} ms"
            print(f"  {row:<13} {system:<12} {figures['cpu_ms']:.3f} ms{server}  ({figures['rate']:,.0f}/s)")
    for what, why in NOT_MEASURED:
        print(f"{what}: {why}")
    print("\n| row | ours | peer | ratio ours/peer | target | result | worker CPU per task, ours / peer |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))
    for what, why in NOT_MEASURED:
        print(f"| {what} | | | | | {why} | |")


def prefork2(medians: dict[Key, dict[str, float]], selected: list[str]) -> list[str]:
    """Print the prefork2 row system by system: tasks/s and worker CPU per task (the whole process tree); table rows."""
    table = []
    if "prefork2" not in selected:
        return table
    print("\nprefork2: drain on Redis, two processes per system, results stored in Redis "
          "(tasks/s; worker CPU ms per task, summed over the worker's processes)")
    for task, what in PREFORK2_TASKS.items():
        print(f"  task: {what}")
        for system, name in PREFORK2.items():
            figures = medians.get((f"prefork2-{task}", system))
            if figures is None:
                print(f"    {name:<26} not measured: the measurement failed (its error is above)")
                table.append(f"| prefork2, {what}: {name} | | not measured: failed | | | info | |")
                continue
            counted = f", counter {figures['counted']:,.0f}" if "counted" in figures else ""
            line = f"{figures['rate']:,.0f}/s, CPU {figures['cpu_ms']:.3f} ms per task{counted}"
            print(f"    {name:<26} {line}")
            table.append(f"| prefork2, {what}: {name} | | {line} | | | info | |")
    return table


def absolute(medians: dict[Key, dict[str, float]], selected: list[str]) -> list[str]:
    """Print the targets that are a number rather than a ratio (the better of the pools counts); table rows."""
    table = []
    for what, keys, metric, compare, target in ABSOLUTE:
        if keys[0][0].split("-")[0] not in selected:
            continue
        found = [key for key in keys if key in medians]
        if not found:
            print(f"  {what}: not measured: the measurement failed (its error is above)")
            table.append(f"| {what} | | | | {compare} {target:g} | not measured: failed | |")
            continue
        unit = UNITS[metric]
        if metric == "locked":  # every "database is locked" counts, not a median
            figure = sum(medians[key]["locked_total"] for key in found)
            shown = ", ".join(f"{POOLS[key[1]]}: {medians[key]['locked_total']:.0f}" for key in found)
        else:
            best = max(found, key=lambda key: medians[key][metric])
            figure = medians[best][metric]
            shown = ", ".join(f"{POOLS[key[1]]}: {unit.format(medians[key][metric])} "
                              f"({cpu_per_task(medians[key])})" for key in found)
        verdict = "PASS" if COMPARE[compare](figure, target) else "FAIL"
        if len(found) < len(keys):
            shown += "; the other pool failed"
        print(f"  {what}: {unit.format(figure)} ({shown}) (target {compare} {target:g}) {verdict}")
        table.append(f"| {what} | {unit.format(figure)} | {shown} | | {compare} {target:g} | {verdict} | |")
    return table


def cpu_per_task(figures: dict[str, float]) -> str:
    """"CPU per task: workers X ms[, PostgreSQL Y ms]"."""
    server = f", PostgreSQL {figures['db_cpu_ms']:.3f} ms" if "db_cpu_ms" in figures else ""
    return f"CPU per task: workers {figures['cpu_ms']:.3f} ms{server}"


def scaled(medians: dict[Key, dict[str, float]], selected: list[str]) -> list[str]:
    """Print the scale row: each cost with many tasks queued over the same cost with few; table rows."""
    table = []
    if "scale" not in selected:
        return table
    pair = medians.get(("scale-large", "redis"), {}).get("enqueue_pair_ratio")
    if pair is not None:
        what = "scale, Redis: enqueue, one delay(), full and empty queue alternating in one run"
        full = f"queue holding {medians[('scale-large', 'redis')]['queued']:,.0f}"
        empty = "queue holding only these sends"
        verdict = "PASS" if pair <= SCALE_TARGET else "FAIL"
        print(f"  {what}: {full} over {empty}, ratio {pair:.2f} (median of the runs' ratios; "
              f"target <= {SCALE_TARGET:g}) {verdict}")
        table.append(f"| {what} | {full} | {empty} | {pair:.2f} | <= {SCALE_TARGET:g} | {verdict} | |")
    for what, row, broker, metric in SCALE:
        large, small = (f"{row}-large", broker), (f"{row}-small", broker)
        if large not in medians or small not in medians:
            if broker == "redis" or large in medians or small in medians:
                print(f"  {what}: not measured: the measurement failed (its error is above)")
                table.append(f"| {what} | | | | <= {SCALE_TARGET:g} | not measured: failed | |")
            continue
        unit = UNITS[metric]
        many, few = medians[large], medians[small]
        # the median of the runs' own ratios (each run measures both back to back) when every run measured both
        ratio = many.get(f"{metric}_ratio", many[metric] / few[metric])
        how = "median of the runs' ratios" if f"{metric}_ratio" in many else "ratio of the medians"
        verdict = "PASS" if ratio <= SCALE_TARGET else "FAIL"
        noun = SCALE_NOUN[row]
        mine = f"{many['queued']:,.0f} {noun}: {unit.format(many[metric])}"
        theirs = f"{few['queued']:,.0f} {noun}: {unit.format(few[metric])}"
        print(f"  {what}: {mine}, {theirs}, ratio {ratio:.2f} ({how}; target <= {SCALE_TARGET:g}) {verdict}")
        table.append(f"| {what} | {mine} | {theirs} | {ratio:.2f} | <= {SCALE_TARGET:g} | {verdict} | |")
    return table
