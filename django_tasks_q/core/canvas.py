"""Signatures and chains: a task call written down to be made later, as Celery's canvas.

A ``Signature`` is a plain ``dict`` -- ``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable`` -- exactly the shape Celery puts
in a protocol v2 ``embed`` (``callbacks``, ``errbacks``, ``chain``), so it
survives JSON, can be stored (a ``PeriodicTask``'s kwargs, a model field),
and Celery clients and workers read ours and we read theirs.

Partial application follows Celery's ``Signature._merge``: arguments given
when the signature is called come *first* (``add.s(2).delay(3)`` runs
``add(3, 2)``), keyword arguments are merged over the stored ones, call
options override stored options. An immutable signature (``si``) ignores
partial arguments, which is how a chain step opts out of receiving the
previous result.

Composite kinds (``chain`` here; ``group``/``chord`` in ``groups.py``) are
``Signature`` subclasses registered by ``subtask_type`` with
``Signature.register_type``; ``signature(d)`` rebuilds the right class from a
dict read off the wire or out of the database.
"""

from __future__ import annotations

import builtins
import copy
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast, overload

from ..conf import settings
from ..exceptions import ImproperlyConfigured
from ..results.async_result import AsyncResult, EagerResult
from .states import TaskState

_KEYS = ("task", "args", "kwargs", "options", "subtask_type", "immutable")


class Signature(dict):
    """One task call with its arguments and options, not sent yet (``add.s(2, 2)``)."""

    #: subtask_type -> class, filled by ``register_type`` (``"chain"``, ``"group"``, ``"chord"``...)
    TYPES: dict[str, type[Signature]] = {}

    def __init__(self, task: Any = None, args: Iterable | None = None, kwargs: dict | None = None,
                 options: dict | None = None, subtask_type: str | None = None, immutable: bool = False,
                 **extra_options: Any):
        if isinstance(task, dict):  # signature({...}) / Signature(other_signature)
            source = task
            task, args, kwargs = source.get("task"), source.get("args"), source.get("kwargs")
            options, subtask_type = source.get("options"), source.get("subtask_type")
            immutable = bool(source.get("immutable", False))
        name = getattr(task, "name", task)  # a Task instance or its registered name
        if subtask_type is None and not isinstance(name, str):
            raise TypeError(f"signature needs a task name or a task, got {task!r}")
        if args is not None and isinstance(args, (str, bytes, dict)):
            raise TypeError(f"signature args for {name} must be a list or tuple, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"signature kwargs for {name} must be a dict, got {kwargs!r}")
        super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                         options={**dict(options or {}), **extra_options}, subtask_type=subtask_type,
                         immutable=bool(immutable))

    # -- the dict's keys as attributes, as Celery -------------------------------------------
    task = property(lambda self: self["task"], lambda self, v: self.__setitem__("task", v))
    args = property(lambda self: self["args"], lambda self, v: self.__setitem__("args", tuple(v)))
    kwargs = property(lambda self: self["kwargs"], lambda self, v: self.__setitem__("kwargs", dict(v)))
    options = property(lambda self: self["options"], lambda self, v: self.__setitem__("options", dict(v)))
    subtask_type = property(lambda self: self["subtask_type"])
    immutable = property(lambda self: self["immutable"], lambda self, v: self.__setitem__("immutable", bool(v)))

    @property
    def name(self) -> str:
        return self.task

    @property
    def type(self) -> Any:
        """The registered ``Task``; ``ImproperlyConfigured`` naming the task if this process does not know it."""
        from .registry import registry

        found = registry.get(self.task)
        if found is None:
            raise ImproperlyConfigured(f"signature names task {self.task!r}, which is not registered here")
        return found

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    @classmethod
    def register_type(cls, name: str | None = None) -> Callable[[builtins.type], builtins.type]:
        """Class decorator: ``signature(d)`` builds this class for ``d["subtask_type"] == name``."""

        def register(klass: builtins.type) -> builtins.type:  # ``type`` is the property above
            cls.TYPES[name or klass.__name__] = klass
            return klass

        return register

    @classmethod
    def from_dict(cls, d: dict) -> Signature:
        """The right class for ``d`` (a plain task, a chain, a group...); the dict itself is not kept."""
        kind = d.get("subtask_type")
        if kind and kind in cls.TYPES:
            return cls.TYPES[kind].from_dict(d)
        if kind:
            raise ImproperlyConfigured(f"unknown signature type {kind!r} for {d.get('task')!r}")
        return Signature(d)

    # -- partial application -------------------------------------------------------------------
    def _merge(self, args: Iterable | None = None, kwargs: dict | None = None,
               options: dict | None = None) -> tuple[tuple, dict, dict]:
        """Celery's rule: new args first, then the stored ones; new kwargs/options win."""
        new_options = {**self.options, **(options or {})}
        if self.immutable:
            return tuple(self.args), dict(self.kwargs), new_options
        return tuple(args or ()) + tuple(self.args), {**self.kwargs, **(kwargs or {})}, new_options

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> Signature:
        """A deep copy, with partial args/kwargs/options merged as when calling."""
        args, kwargs, options = self._merge(args, kwargs, options)
        clone = Signature.from_dict(copy.deepcopy({**self, "args": args, "kwargs": kwargs, "options": options}))
        return clone

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """``sig.set(queue="videos", countdown=10)``: change stored options in place; returns the signature."""
        if immutable is not None:
            self.immutable = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def freeze(self, _id: str | None = None, **options: Any) -> AsyncResult:
        """Give the signature its task id now (kept in ``options``) and return its result handle."""
        self.options.update({k: v for k, v in options.items() if v is not None})
        if _id is not None:
            self.options["task_id"] = _id
        self.options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(self.options["task_id"], task_name=self.task)

    # -- calling -------------------------------------------------------------------------------
    def __call__(self, *partial_args: Any, **partial_kwargs: Any) -> Any:
        """Run the task here and now, like calling the function (``add.s(3, 4)()`` -> 7)."""
        args, kwargs, _ = self._merge(partial_args, partial_kwargs)
        return self.type(*args, **kwargs)

    def delay(self, *partial_args: Any, **partial_kwargs: Any) -> AsyncResult:
        return self.apply_async(partial_args, partial_kwargs)

    def apply_async(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> AsyncResult:
        """Send the task with ``args`` prepended, ``kwargs`` and ``options`` merged (options in docs/calling.md)."""
        from .calling import send
        from .registry import registry

        args, kwargs, options = self._merge(args, kwargs, options)
        return send(self.task, args, kwargs, options, task=registry.get(self.task))

    def apply(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> EagerResult:
        """Run in this process through the worker's executor (as ``task.apply``)."""
        args, kwargs, options = self._merge(args, kwargs, options)
        return self.type.apply(args, kwargs, **{k: v for k, v in options.items() if k in _EAGER_OPTIONS})

    # -- callbacks -----------------------------------------------------------------------------
    def _append_option(self, key: str, value: Any) -> Any:
        items = self.options.setdefault(key, [])
        if not isinstance(items, list):
            items = self.options[key] = list(items) if isinstance(items, tuple) else [items]
        if value not in items:
            items.append(value)
        return value

    def link(self, callback: dict) -> dict:
        """Run ``callback`` with this task's result prepended after it succeeds; returns ``callback``."""
        return self._append_option("link", callback)

    def link_error(self, errback: dict) -> dict:
        """Run ``errback`` when this task fails (see docs/workflows.md for its arguments)."""
        return self._append_option("link_error", errback)

    def on_error(self, errback: dict) -> Signature:
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, dict):
            return chain(self, other)
        return NotImplemented

    def __ror__(self, other: Any) -> Signature:
        if isinstance(other, dict):
            return chain(other, self)
        return NotImplemented

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    def __deepcopy__(self, memo: dict) -> Signature:
        return Signature.from_dict(copy.deepcopy(dict(self), memo))

    def __reduce__(self) -> tuple:
        return (Signature.from_dict, (dict(self),))


#: what ``Signature.apply`` passes on to ``task.apply`` (the rest only means something on the wire)
_EAGER_OPTIONS = {"task_id", "link", "link_error"}


subtask = Signature


def signature(varies: Any, args: Iterable | None = None, kwargs: dict | None = None,
              options: dict | None = None, **opts: Any) -> Signature:
    """``signature("videos.tasks.add", (2, 2))``, ``signature(task)`` or ``signature(stored_dict)``."""
    if isinstance(varies, dict):
        if isinstance(varies, Signature):
            return varies.clone()
        return Signature.from_dict(varies)
    return Signature(varies, args, kwargs, {**dict(options or {}), **opts})


@overload
def maybe_signature(value: None) -> None: ...
@overload
def maybe_signature(value: dict) -> Signature: ...
@overload
def maybe_signature(value: Any) -> Signature | None: ...
def maybe_signature(value: Any) -> Signature | None:
    """A ``Signature`` for a signature or a dict; ``None`` stays ``None``."""
    if value is None or isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return Signature.from_dict(value)
    raise TypeError(f"expected a signature (add.s(...)) or its dict, got {value!r}")


@Signature.register_type("chain")
class chain(Signature):  # noqa: N801 - Celery's name
    """``chain(a, b, c)`` / ``a | b | c``: run in turn, each result the first argument of the next.

    An immutable step (``si``) does not get the previous result. Sending it
    sends only the first step; the others travel in protocol v2's
    ``embed["chain"]`` (in reverse order, as Celery does), each with its task
    id assigned here, so the returned result -- the *last* step's, whose
    ``parent`` walks back to the first -- is known at once.
    """

    def __init__(self, *tasks: Any, **options: Any):
        if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])  # chain(generator) / chain([a, b])
        steps: list[Signature] = []
        for item in tasks:
            sig = maybe_signature(item)
            if isinstance(sig, chain):
                steps.extend(sig.tasks)  # a chain of chains is one chain
            else:
                steps.append(sig)
        super().__init__("celery.chain", (), {"tasks": steps}, options, subtask_type="chain")

    @classmethod
    def from_dict(cls, d: dict) -> chain:
        tasks = (d.get("kwargs") or {}).get("tasks") or []
        made = cls(*[maybe_signature(t) for t in tasks], **(d.get("options") or {}))
        made.immutable = bool(d.get("immutable", False))
        if d.get("args"):
            made.args = d["args"]
        return made

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, dict):
            return chain(self, other)
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) if self.tasks else "chain()"

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> chain:
        made = chain(*[t.clone() for t in self.tasks], **copy.deepcopy({**self.options, **options}))
        made.args = tuple(args or ()) + tuple(self.args)
        return made

    def _steps(self, args: Iterable | None, kwargs: dict | None, options: dict) -> list[Signature]:
        if not self.tasks:
            raise ValueError("cannot send an empty chain")
        steps = [t.clone() for t in self.tasks]
        partial_args = tuple(args or ()) + tuple(self.args)
        if partial_args or kwargs:
            steps[0] = steps[0].clone(partial_args, kwargs)
        options = {**self.options, **options}
        link, link_error = options.pop("link", None), options.pop("link_error", None)
        for errback in _as_list(link_error):  # any failing step runs the chain's errbacks
            for step in steps:
                step.link_error(errback)
        for callback in _as_list(link):  # the chain's callbacks follow its last step
            steps[-1].link(callback)
        if options.get("task_id"):  # the chain's id is its result's: the last step's, as in Celery
            steps[-1].options["task_id"] = options.pop("task_id")
        steps[0].options.update(options)
        return steps

    def apply_async(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> AsyncResult:
        """Send the first step, the rest embedded; returns the last step's result."""
        if settings.ALWAYS_EAGER:
            return self.apply(args, kwargs, **options)
        steps = self._steps(args, kwargs, options)
        first = steps[0]
        root_id = first.options.get("root_id")
        results: list[AsyncResult] = []
        for index, step in enumerate(steps):
            if index:
                step.options.pop("countdown", None)
                step.options.pop("eta", None)
            result = step.freeze(parent_id=results[-1].id if results else None, root_id=root_id)
            root_id = root_id or result.id
            result.parent = results[-1] if results else None
            results.append(result)
        rest = [dict(step) for step in reversed(steps[1:])]
        first.apply_async(chain=rest or None, root_id=root_id)
        return results[-1]

    def apply(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> EagerResult:
        """Run every step here, in turn (``ALWAYS_EAGER``); a failure fails the steps after it."""
        steps = self._steps(args, kwargs, options)
        last: EagerResult | None = None
        for step in steps:
            if last is not None and last._exception is not None:
                result: EagerResult[Any] = EagerResult(step.freeze().id, TaskState.FAILURE, None, last.traceback or "",
                                     task_name=step.task, exception=last._exception)
            else:
                previous = () if last is None else (last.get(),)
                result = step.apply(previous)
            result.parent = last
            last = result
        assert last is not None  # _steps() refuses an empty chain
        return last


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _basemap(Signature):  # noqa: N801 - Celery's names
    """``task.map(it)`` / ``task.starmap(it)``: one message, the loop runs in the worker."""

    builtin = ""
    star = ""

    def __init__(self, task: Any, it: Iterable, **options: Any):
        super().__init__(self.builtin, (), {"task": dict(maybe_signature(task)), "it": [_plain(i) for i in it]},
                         options, subtask_type=type(self).__name__, immutable=True)

    @classmethod
    def from_dict(cls, d: dict) -> _basemap:
        kwargs = d.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or [], **(d.get("options") or {}))

    def __repr__(self) -> str:
        items = repr(self.kwargs["it"])
        return f"[{self.kwargs['task']['task']}({self.star}x) for x in {items[:100]}]"


@Signature.register_type("xmap")
class xmap(_basemap):  # noqa: N801
    builtin = "celery.map"


@Signature.register_type("xstarmap")
class xstarmap(_basemap):  # noqa: N801
    builtin = "celery.starmap"
    star = "*"


@Signature.register_type("chunks")
class chunks(Signature):  # noqa: N801
    """``task.chunks(it, n)``: ``it`` in parts of ``n``, each part a starmap; the result is a list of lists."""

    def __init__(self, task: Any, it: Iterable, n: int, **options: Any):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks(it, n): n must be a positive integer, got {n!r}")
        super().__init__("celery.chunks", (), {"task": dict(maybe_signature(task)),
                                               "it": [_plain(i) for i in it], "n": n},
                         options, subtask_type="chunks", immutable=True)

    @classmethod
    def from_dict(cls, d: dict) -> chunks:
        kwargs = d.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or [], kwargs["n"], **(d.get("options") or {}))

    def __repr__(self) -> str:
        return f"{self.kwargs['task']['task']}.chunks({repr(self.kwargs['it'])[:100]}, {self.kwargs['n']})"


def _plain(item: Any) -> Any:
    """Tuples from ``zip()`` become lists, as they will be after JSON anyway."""
    return list(item) if isinstance(item, tuple) else item


def builtin_signature(name: str, task: Any, it: Iterable, n: int | None = None) -> Signature:
    """What ``Task.map/starmap/chunks`` return; ``task`` is a ``Task`` or a signature."""
    sig = task if isinstance(task, dict) else Signature(task)
    if name == "celery.chunks":
        return chunks(sig, it, cast(int, n))  # chunks() itself rejects a missing n
    return (xmap if name == "celery.map" else xstarmap)(sig, it)
