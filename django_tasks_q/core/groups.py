"""``group`` and ``chord``: run signatures in parallel, and run a body once they have all finished.

Both are ``Signature`` subclasses with Celery's dict layout
(``subtask_type`` ``"group"`` / ``"chord"``), so they can be chain steps,
stored, and rebuilt by ``signature(d)``.

A group sends each member with the protocol v2 ``group`` header (the group
id) and ``group_index`` and returns a ``GroupResult``. A chord is a group
whose members also carry the body in ``embed["chord"]``: before sending
them the caller has the result backend start the chord (``start_chord``: a
``ChordCounter`` row, or Celery's chord size key in Redis), and the worker
that finishes the last member sends the body with the header's results in
order (the backend's ``on_chord_part_return``, see ``worker/chords.py``). A
backend that does not count chords (``counts_chords``) refuses a chord when
it is sent. Nothing polls. ``ALWAYS_EAGER`` runs both here, with
the same results.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from ..conf import settings
from ..exceptions import ChordError, ImproperlyConfigured
from ..masking import mask_url
from ..results.async_result import AsyncResult, EagerResult
from ..results.backend import describe_exception, get_backend
from ..results.group_result import GroupResult
from .callbacks import call_errbacks
from .canvas import Signature, chain, maybe_signature
from .context import Request
from .states import TaskState

#: options a group/chord hands down to its members (the rest belongs to the group, the body or the caller)
_NOT_FOR_MEMBERS = {"task_id", "group_id", "group_index", "chain", "chord", "link", "link_error"}


def _signatures(tasks: tuple) -> list[Signature]:
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
        tasks = tuple(tasks[0])  # group(generator) / group([a, b])
    found = []
    for item in tasks:
        if not isinstance(item, dict):
            raise TypeError(f"group/chord members must be signatures (add.s(...)), got {item!r}")
        found.append(maybe_signature(item))
    return found


def _with_member_options(sig: Signature, **options: Any) -> Signature:
    """``sig`` carrying group/chord options; for a chain they go on its last step, whose result is the member's."""
    if isinstance(sig, chain):
        sig.tasks[-1].options.update(options)
    else:
        sig.options.update(options)
    return sig


@Signature.register_type("group")
class group(Signature):  # noqa: N801 - Celery's name
    """``group(add.s(i, i) for i in range(10))``: send every member at once; ``delay()`` -> ``GroupResult``."""

    def __init__(self, *tasks: Any, **options: Any):
        super().__init__("celery.group", (), {"tasks": _signatures(tasks)}, options, subtask_type="group")

    @classmethod
    def from_dict(cls, d: dict) -> "group":
        made = cls(*[maybe_signature(t) for t in (d.get("kwargs") or {}).get("tasks") or []],
                   **(d.get("options") or {}))
        if d.get("args"):
            made.args = d["args"]
        made.immutable = bool(d.get("immutable", False))
        return made

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> "group":
        made = group(*[t.clone() for t in self.tasks], **{**self.options, **options})
        made.args = tuple(args or ()) + tuple(self.args)
        return made

    def _members(self, args: Iterable | None, kwargs: dict | None) -> list[Signature]:
        partial_args = tuple(args or ()) + tuple(self.args)
        return [t.clone(partial_args, kwargs) if (partial_args or kwargs) else t.clone() for t in self.tasks]

    def freeze(  # type: ignore[override]  # Celery's API: a group's is a GroupResult
            self, _id: str | None = None, **options: Any) -> GroupResult:
        """Fix the group id (``options["task_id"]``) and the members' task ids now."""
        self.options.update({k: v for k, v in options.items() if v is not None})
        if _id is not None:
            self.options["task_id"] = _id
        group_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return GroupResult(group_id, [t.freeze() for t in self.tasks])

    def apply_async(  # type: ignore[override]  # Celery's API: a group's is a GroupResult
            self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> GroupResult:
        """Send every member with the group's id and its index; the results in member order."""
        options = {**self.options, **options}
        rest = options.pop("chain", None)
        if rest:  # group | more: the rest of the chain waits for the whole group, which is a chord
            header = self.clone()
            header.options["task_id"] = options.pop("task_id", None) or options.pop("group_id", None) \
                or str(uuid.uuid4())
            body = chain(*[maybe_signature(step) for step in reversed(rest)])
            # the chord body's result, not a GroupResult: only a chain step passes chain=, and it drops it
            made = chord(header, body if len(body.tasks) > 1 else body.tasks[0])
            return made.apply_async(args, kwargs, **options)  # type: ignore[return-value]  # chain= callers drop it
        if settings.ALWAYS_EAGER:
            return self.apply(args, kwargs, **options)
        group_id = options.get("group_id") or options.get("task_id") or str(uuid.uuid4())
        common = {k: v for k, v in options.items() if k not in _NOT_FOR_MEMBERS}
        results = []
        for index, member in enumerate(self._members(args, kwargs)):
            _with_member_options(member, group_id=group_id, group_index=index)
            results.append(member.apply_async(**common))
        return GroupResult(group_id, results)

    def apply(  # type: ignore[override]  # Celery's API: a group's is a GroupResult
            self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> GroupResult:
        """Run every member here, in order (``ALWAYS_EAGER``)."""
        group_id = options.get("group_id") or options.get("task_id") or self.options.get("task_id") \
            or str(uuid.uuid4())
        return GroupResult(group_id, [member.apply() for member in self._members(args, kwargs)])


@Signature.register_type("chord")
class chord(Signature):  # noqa: N801 - Celery's name
    """``chord(header, body)``: run the header group, then ``body`` once with its results in order.

    ``chord(header)(body)`` is the same. ``apply_async`` returns the body's
    ``AsyncResult`` (its ``parent`` is the header's ``GroupResult``).
    """

    def __init__(self, header: Any, body: Any = None, args: Iterable | None = None, kwargs: dict | None = None,
                 **options: Any):
        if isinstance(header, dict) and not isinstance(header, group):
            header = maybe_signature(header)
        if not isinstance(header, group):
            header = group(*([header] if isinstance(header, dict) else [header]))
        super().__init__("celery.chord", args, {"header": header, "body": maybe_signature(body)}, options,
                         subtask_type="chord")

    @classmethod
    def from_dict(cls, d: dict) -> "chord":
        kwargs = d.get("kwargs") or {}
        made = cls(maybe_signature(kwargs.get("header")), kwargs.get("body"), d.get("args"), None,
                   **(d.get("options") or {}))
        made.immutable = bool(d.get("immutable", False))
        return made

    @property
    def header(self) -> group:
        return self.kwargs["header"]

    @property
    def body(self) -> Signature | None:
        return self.kwargs["body"]

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Any = None, **options: Any) -> AsyncResult:
        return self.apply_async(body=body, **options)

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> "chord":
        body = self.body.clone() if self.body is not None else None
        made = chord(self.header.clone(), body, tuple(args or ()) + tuple(self.args), None,
                     **{**self.options, **options})
        return made

    def freeze(self, _id: str | None = None, **options: Any) -> AsyncResult:
        """Fix the body's task id now (the chord's result is the body's)."""
        self.options.update({k: v for k, v in options.items() if v is not None})
        if _id is not None:
            self.options["task_id"] = _id
        body_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(body_id, task_name=self.body.task if self.body is not None else None)

    def _prepare(self, body: Any, options: dict) -> tuple[Signature, str, dict]:
        """The body to send (its id, links and the rest of an outer chain attached) and the members' options."""
        body = maybe_signature(body) or self.body
        if body is None:
            raise ValueError("chord needs a body: chord(header, body) or chord(header)(body)")
        options = {**self.options, **options}
        body = body.clone()
        target = body.tasks[-1] if isinstance(body, chain) else body
        body_id = options.pop("task_id", None) or target.options.get("task_id") or str(uuid.uuid4())
        target.options["task_id"] = body_id  # the chord's result is its body's
        for errback in _as_list(options.pop("link_error", None)):
            body.link_error(errback)
        for callback in _as_list(options.pop("link", None)):
            body.link(callback)
        rest = options.pop("chain", None)
        if rest:  # chord inside a chain: the steps after the chord follow its body
            body = chain(body, *[maybe_signature(step) for step in reversed(rest)])
        for step in body.tasks if isinstance(body, chain) else [body]:  # every id known now: a failure marks them
            step.options.setdefault("task_id", str(uuid.uuid4()))
        for key in ("parent_id", "root_id"):
            if options.get(key):
                body.options.setdefault(key, options[key])
        return body, body_id, {k: v for k, v in options.items() if k not in _NOT_FOR_MEMBERS}

    def apply_async(self, args: Iterable | None = None, kwargs: dict | None = None, body: Any = None,
                    **options: Any) -> AsyncResult:
        """Start the chord on the result backend, then send the header; returns the body's result."""
        if settings.ALWAYS_EAGER:
            return self.apply(args, kwargs, body=body, **options)
        body, body_id, common = self._prepare(body, options)
        members = self.header._members(tuple(args or ()) + tuple(self.args), kwargs)
        group_id = self.header.options.get("task_id") or str(uuid.uuid4())
        if not members:  # nothing to wait for
            body.apply_async(([],))
            return _result(body_id, body, GroupResult(group_id, []))
        backend = get_backend()
        ids = [str(uuid.uuid4()) for _ in members]
        body_dict = {**dict(body), "chord_size": len(members)}
        if not backend.counts_chords:
            raise ImproperlyConfigured(
                f"chord needs a result backend that counts its members ('django', 'redis://...' or 'cache'), "
                f"got RESULT_BACKEND = {mask_url(str(settings.RESULT_BACKEND))!r}")
        backend.start_chord(group_id, body_dict, ids)
        results = []
        for index, (member, task_id) in enumerate(zip(members, ids)):
            _with_member_options(member, group_id=group_id, group_index=index, chord=body_dict, task_id=task_id)
            results.append(member.apply_async(**common))
        return _result(body_id, body, GroupResult(group_id, results))

    def apply(self, args: Iterable | None = None, kwargs: dict | None = None, body: Any = None,
              **options: Any) -> EagerResult:
        """Run the header here, then the body with its results (``ALWAYS_EAGER``)."""
        body, body_id, _ = self._prepare(body, options)
        header = self.header.clone(tuple(args or ()) + tuple(self.args), kwargs).apply()
        for member in header.results:
            if member.failed():
                exc = member.get(propagate=False)
                error = ChordError(f"chord member {member.task_name}[{member.id}] failed: {type(exc).__name__}: {exc}")
                call_errbacks(_as_list(body.options.get("link_error")),
                              Request(id=body_id, task=body.task, root_id=body_id, is_eager=True), error, str(error))
                result: EagerResult[Any] = EagerResult(body_id, TaskState.FAILURE, describe_exception(error),
                                                       str(error), task_name=body.task, exception=error)
                result.parent = header
                return result
        result = body.apply((header.get(),))
        result.parent = header
        return result


def _result(body_id: str, body: Signature, header: GroupResult) -> AsyncResult:
    result: AsyncResult[Any] = AsyncResult(body_id, task_name=body.task)
    result.parent = header
    return result


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
