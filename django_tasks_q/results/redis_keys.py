"""Celery's key layout in Redis: one key per task result, one per saved group, the chord keys beside it.

Kept apart from the backend (results/redis.py) and the chord counting (results/redis_chords.py), which both
name keys, so that neither imports the other; the cache backend (results/cache.py, results/cache_chords.py)
names its cache keys the same way.
"""

TASK_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"


def task_key(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}"


def group_key(group_id: str) -> str:
    """The saved group's key; its chord's keys are this plus ``.j``, ``.d``, ``.s``, ``.t`` and ``.c``."""
    return f"{GROUP_PREFIX}{group_id}"
