"""``AsyncResult``: the caller's handle on a task's state and outcome."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from ..core.states import EXCEPTION_STATES, PROPAGATE_STATES, TaskState
from .backend import ResultBackend, ResultMeta, get_backend, rebuild_exception

if TYPE_CHECKING:
    from .group_result import GroupResult


#: what the task returns: ``AsyncResult[int].get()`` is an ``int``
R = TypeVar("R")


class AsyncResult(Generic[R]):
    """Reads a task's result from the configured backend; caches it once ready."""

    def __init__(self, id: str, backend: ResultBackend | None = None, task_name: str | None = None):  # noqa: A002
        self.id = str(id)
        self.task_id = self.id
        self.task_name = task_name
        self._backend = backend
        self._ready_meta: ResultMeta | None = None
        #: the result of the task before this one in a chain (set by ``chain.apply_async``, client side),
        #: or the header's ``GroupResult`` for a chord's body
        self.parent: AsyncResult | GroupResult | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def backend(self) -> ResultBackend:
        return self._backend or get_backend()

    def _meta(self) -> ResultMeta:
        if self._ready_meta is not None:
            return self._ready_meta
        meta = self.backend.meta(self.id) or ResultMeta(task_id=self.id, state=TaskState.PENDING)
        if meta.ready:
            self._ready_meta = meta
        return meta

    @property
    def state(self) -> str:
        return self._meta().state

    status = state

    def ready(self) -> bool:
        return self._meta().ready

    def successful(self) -> bool:
        return self.state == TaskState.SUCCESS

    def failed(self) -> bool:
        return self.state == TaskState.FAILURE

    @property
    def info(self) -> Any:
        """The return value, the exception, or a custom state's ``meta``."""
        meta = self._meta()
        if meta.state in EXCEPTION_STATES:
            return rebuild_exception(meta.result)
        return meta.result

    result = info

    @property
    def traceback(self) -> str | None:
        return self._meta().traceback or None

    @property
    def date_done(self) -> datetime | None:
        return self._meta().date_done

    @property
    def retries(self) -> int:
        return self._meta().retries

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True, interval: float = 0.1) -> R: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool, interval: float = 0.1) -> R | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> R | BaseException:
        """Wait for the outcome; re-raise the task's exception when ``propagate`` (else return it)."""
        if self._ready_meta is None:
            self._ready_meta = self.backend.wait(self.id, timeout, interval)
        meta = self._ready_meta
        if meta.state in PROPAGATE_STATES:
            exc = rebuild_exception(meta.result)
            if propagate:
                raise exc
            return exc
        return meta.result

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> Any:
        """``await result.aget()`` from async code: polls the result backend without blocking the loop."""
        import asyncio

        from asgiref.sync import sync_to_async

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = min(0.02, interval)
        while True:
            meta = await sync_to_async(self.backend.meta)(self.id)
            if meta is not None and meta.ready:
                self._ready_meta = meta
                return self.get(propagate=propagate)
            if deadline is not None and loop.time() >= deadline:
                from ..exceptions import TimeoutError as ResultTimeout

                raise ResultTimeout(f"task {self.id} not ready after {timeout}s "
                                    f"(state {meta.state if meta else 'PENDING'})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, interval)

    def forget(self) -> None:
        self._ready_meta = None
        self.backend.forget(self.id)

    def revoke(self, terminate: bool = False, signal: str | int = "SIGTERM", reason: str = "") -> None:
        """Make sure this task does not run; with ``terminate``, also stop it if it is running.

        The revoke is a database row kept for ``REVOKE_EXPIRES`` seconds, so
        it holds for a task that is queued, waiting for its eta or prefetched
        by a worker, across restarts of every worker; a result that is not
        ready yet is marked REVOKED at once. Running workers see it within
        about a second (see docs/reliability.md). ``signal`` is what a prefork
        child running the task is stopped with (``"SIGTERM"``, ``"SIGKILL"``...).
        """
        from ..core.revoking import revoke

        revoke([self.id], terminate=terminate, signal=signal, reason=reason)


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in this process (``apply()`` / ALWAYS_EAGER)."""

    def __init__(self, id: str, state: str, value: Any, traceback: str = "", task_name: str | None = None,  # noqa: A002
                 exception: BaseException | None = None):
        super().__init__(id, task_name=task_name)
        self._state = state
        self._value = value
        self._exception = exception
        self._traceback = traceback

    def _meta(self) -> ResultMeta:
        return ResultMeta(task_id=self.id, state=self._state, result=self._value, traceback=self._traceback,
                          task_name=self.task_name or "")

    @property
    def info(self) -> Any:
        return self._exception if self._exception is not None else self._value

    result = info

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True, interval: float = 0.1) -> R: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool, interval: float = 0.1) -> R | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> R | BaseException:
        if self._exception is not None:
            if propagate:
                raise self._exception
            return self._exception
        return self._value

    def forget(self) -> None:
        return None
