"""Checked by mypy in tests/unit/test_typing.py, never run: each call below whose comment starts with
``E:`` must be reported by mypy with the text after it, and no other line may be."""

from django_tasks_q import AsyncResult, Task, task


@task
def add(x: int, y: int) -> int:
    return x + y


@task(bind=True, max_retries=3)
def fetch(self: Task, url: str, *, timeout: float = 1.0) -> bytes:
    return url.encode()


@task(queue="videos")
def describe(video_id: int) -> dict[str, int]:
    return {"id": video_id}


def well_typed() -> None:
    total: int = add.delay(1, 2).get()
    result: AsyncResult[int] = add.apply_async((1, 2), countdown=3)
    body: bytes = fetch.delay("https://example.com", timeout=2.0).get()
    info: dict[str, int] = describe.delay(7).get(timeout=1)
    direct: int = add(1, 2)
    del total, result, body, info, direct


def badly_typed() -> None:
    add.delay(1, "x")  # E: Argument 2 to "delay" of "Task" has incompatible type "str"; expected "int"
    add.delay(1)  # E: Missing positional argument "y" in call to "delay" of "Task"
    fetch.delay(42)  # E: Argument 1 to "delay" of "Task" has incompatible type "int"; expected "str"
    fetch.delay("u", timeot=1.0)  # E: Unexpected keyword argument "timeot" for "delay" of "Task"
    text: str = add.delay(1, 2).get()  # E: Incompatible types in assignment (expression has type "int", variable has type "str")
    del text
