"""``@task`` and ``Task``: declaring, calling and retrying tasks.

``@task`` turns a function into a ``Task`` instance registered under
``"<module>.<function>"`` (or ``name=``). Hooks (``on_success`` ...) are
methods of the task's class, so ``@task(base=Audited)`` instantiates
``Audited`` around the function. Options are validated when the module is
imported: a misspelled option is an error at start-up, not a silent no-op.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from asgiref.sync import sync_to_async
from django.db import transaction

from ..exceptions import ImproperlyConfigured, MaxRetriesExceededError, Retry
from ..results.async_result import AsyncResult
from ..results.backend import get_backend
from . import aio, commit_batch, context
from .calling import send, send_many
from .canvas import Signature, builtin_signature
from .options import TaskOptions
from .registry import registry


def _checked_args(name: str, calls: Iterable[Any]) -> list[Sequence[Any]]:
    listed = list(calls)
    for index, args in enumerate(listed):
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{name}.delay_many(): call {index} must be a tuple of arguments, got {args!r} "
                            f"(for one argument write ({args!r},)); nothing was sent")
    return listed


#: the task function's parameters (without ``self`` for ``bind=True``) and its return type: type checkers
#: then see ``add.delay(1, "x")`` as the error it is for ``add(x: int, y: int)``, and ``.get()`` as an int
P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A registered task. Subclass it (``base=``) to add hooks."""

    def __init__(self, function: Callable[..., Any], options: TaskOptions):
        self.function = function
        self.options = options
        self.name = options.name or f"{function.__module__}.{function.__name__}"
        self.qualified_function = f"{function.__module__}.{function.__qualname__}"
        self.__doc__ = function.__doc__
        self.__name__ = function.__name__
        self.__module__ = function.__module__
        self.__wrapped__ = function
        self.is_async = inspect.iscoroutinefunction(function)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # -- running -------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run in this process, like calling the function."""
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        call_args = (self, *args) if self.options.bind else args
        if self.is_async:  # its thread's event loop, reused from task to task (core/aio.py)
            return aio.run(self.function(*call_args, **kwargs))
        return self.function(*call_args, **kwargs)

    @property
    def request(self) -> context.Request:
        return context.current()

    # -- hooks (override in a base class) ------------------------------
    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        """Called in the worker after the task returned."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """Called in the worker after the task raised (and will not be retried)."""

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """Called in the worker when the task is sent again by ``retry``."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """Called in the worker after every run, whatever the outcome."""

    # -- calling -------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``add.delay(2, 3)``: send with default options."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: tuple | list | None = None, kwargs: dict | None = None,
                    **options: Any) -> AsyncResult[R]:
        """Send the task; see docs/calling.md for the options."""
        return send(self.name, args, kwargs, options, task=self)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``await add.adelay(2, 3)`` from an async view: ``delay`` in a worker thread (it may read routes
        from the database), so the event loop is not blocked by the broker round trip."""
        return await sync_to_async(self.apply_async)(args, kwargs)

    def delay_many(self, calls: Iterable[Sequence[Any]]) -> list[AsyncResult[R]]:
        """``add.delay_many([(1, 2), (3, 4)])``: one task per argument tuple, sent together.

        On Redis the messages go out pipelined, hundreds per round trip; on
        other brokers one by one. Returns the results in the order of ``calls``.
        """
        return self.apply_async_many([(args, None) for args in _checked_args(self.name, calls)])

    def apply_async_many(self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any] | None]],
                         **options: Any) -> list[AsyncResult[R]]:
        """``add.apply_async_many([((1, 2), {}), ((3,), {"y": 4})], queue="fast")``: one task per
        ``(args, kwargs)`` pair, all with the same options (each gets its own id), sent together."""
        pairs = list(calls)
        for index, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], (tuple, list))
                    and (pair[1] is None or isinstance(pair[1], Mapping))):
                raise TypeError(f"{self.name}.apply_async_many(): call {index} must be an (args, kwargs) pair "
                                f"such as ((1, 2), {{}}), got {pair!r}; nothing was sent")
        return send_many(self.name, pairs, options, task=self)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Send after the current transaction commits; never if it rolls back.

        Returns ``None`` because the task id does not exist until the commit,
        as with Celery's ``delay_on_commit``. Calls registered one after another
        are sent together, as ``apply_async_many()`` sends (:mod:`.commit_batch`).
        """
        if type(self).apply_async is not Task.apply_async:  # an override sees each call, as it always did
            transaction.on_commit(lambda: self.apply_async(args, kwargs))
        else:
            commit_batch.delay_on_commit(self, args, kwargs)

    def apply(self, args: tuple | list | None = None, kwargs: dict | None = None, **options: Any) -> AsyncResult[R]:
        """Run now in this process and return an ``EagerResult`` (used by ALWAYS_EAGER)."""
        from ..worker.eager import execute_eagerly

        return execute_eagerly(self, tuple(args or ()), dict(kwargs or {}), options)

    # -- canvas (core/canvas.py) ------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """``add.s(2, 2)``: a signature of this task, partial arguments allowed."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a chain or callback will not prepend a result to its args."""
        return Signature(self, args, kwargs, immutable=True)

    def signature(self, args: tuple | list | None = None, kwargs: dict | None = None, **options: Any) -> Signature:
        return Signature(self, args, kwargs, options)

    subtask = signature

    def map(self, it: Any) -> Signature:
        """One message running ``[task(item) for item in it]`` in the worker (``celery.map``)."""
        return builtin_signature("celery.map", self, it)

    def starmap(self, it: Any) -> Signature:
        """One message running ``[task(*item) for item in it]`` in the worker (``celery.starmap``)."""
        return builtin_signature("celery.starmap", self, it)

    def chunks(self, it: Any, n: int) -> Signature:
        """One message running ``it`` in parts of ``n`` as ``starmap``: a list of lists (``celery.chunks``)."""
        return builtin_signature("celery.chunks", self, it, n)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, task_name=self.name)  # the module's class, not this method

    # -- inside a running task ----------------------------------------
    def update_state(self, state: str, meta: Any = None, task_id: str | None = None) -> None:
        """Record a custom state such as ``PROGRESS`` with ``meta`` (read back as ``AsyncResult.info``)."""
        request = self.request
        target_id = task_id or request.id
        if target_id is None:
            raise ImproperlyConfigured(f"{self.name}.update_state() outside a running task needs task_id=")
        target = request.backend or get_backend()
        target.mark(target_id, state, result=meta, request=request, task_name=self.name)

    def retry(self, exc: BaseException | None = None, countdown: float | None = None, eta: datetime | None = None,
              max_retries: int | None = None, args: tuple | None = None, kwargs: dict | None = None) -> Retry:
        """Ask for another attempt of this task: raises ``Retry`` (write ``raise self.retry(...)``).

        The worker records RETRY, then sends the next attempt with the same id,
        ``request.retries + 1``, the same queue, time limits, links and expiry,
        after ``countdown`` seconds (default ``default_retry_delay``) or at ``eta``.
        ``max_retries`` overrides the task's limit for this call only; ``None``
        means the task's ``max_retries``, which may itself be ``None`` (no limit).
        Past the limit raises ``MaxRetriesExceededError`` chained (``__cause__``)
        to ``exc`` -- where Celery would re-raise ``exc`` itself.
        """
        request = self.request
        if request.id is None:
            raise exc if exc is not None else ImproperlyConfigured("retry() called outside a running task")
        limit = self.options.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
            raise MaxRetriesExceededError(
                f"task {self.name} [{request.id}] gave up after {request.retries} retries{cause}"
            ) from exc
        if countdown is None and eta is None:
            countdown = self.options.default_retry_delay
        if request.is_eager:  # the eager executor runs the next attempt itself
            raise Retry(exc=exc, when=countdown, retry_args=args, retry_kwargs=kwargs)
        retry = Retry(exc=exc, when=countdown if eta is None else None)
        # sent by the executor after it has stored RETRY, never before (see worker/executor.py)
        retry.resend = partial(self.apply_async, request.args if args is None else args,
                               request.kwargs if kwargs is None else kwargs,
                               **request.resend_options(countdown, eta))
        raise retry


@overload
def task(function: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def task(function: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(*, bind: Literal[True], **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
@overload
def task(*, bind: Literal[False] = False, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(bind=True, queue="videos", ...)``.

    Typed so the task keeps its function's signature: ``add.delay(1, "x")``
    is a type error for ``add(x: int, y: int)``, and with ``bind=True`` the
    first parameter (the task itself) is not part of the call.
    """

    def decorate(fn: Callable[..., Any]) -> Task:
        given = dict(options)  # not options.pop(): the decorator may be applied to several functions
        base = given.pop("base", Task)
        if not (isinstance(base, type) and issubclass(base, Task)):
            raise ImproperlyConfigured(f"@task(base=...) on {fn.__qualname__} must be a Task subclass, got {base!r}")
        where = f"@task on {fn.__module__}.{fn.__qualname__}"
        opts = TaskOptions.from_kwargs(where, **given)
        if opts.bind and not inspect.signature(fn).parameters:
            raise ImproperlyConfigured(f"{where}: bind=True needs a first parameter (self)")
        return registry.register(base(fn, opts))

    if function is not None:
        if options:
            raise TypeError("use @task(...) with keyword options, or @task alone")
        return decorate(function)
    return decorate


#: Celery spelling, for code being moved over.
shared_task = task

