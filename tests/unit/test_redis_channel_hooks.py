"""The ``redis://`` transport's lists of kombu hooks are the truth (``broker/transport/redis.py``).

Each of our classes there (``Channel``, ``QoS``, ``Poller``, ``Transport``)
lists in its docstring every name of kombu's class that it overrides: a
method, a class attribute, or an attribute its ``__init__`` replaces. These
tests compute the overrides from the classes themselves, so a new override
that is not listed fails here -- and so does a listed one that is gone --
and check that every private one is in ``django_tasks_q/compat.py``, whose
test checks it against the installed kombu.
"""

from __future__ import annotations

import functools
import inspect
import re
from importlib.metadata import version
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis
from packaging.version import Version

from django_tasks_q.broker.transport import redis as ours
from django_tasks_q.compat import PRIVATE_NAMES

PAIRS = [(ours.Channel, kombu_redis.Channel), (ours.QoS, kombu_redis.QoS),
         (ours.Poller, kombu_redis.MultiChannelPoller), (ours.Transport, kombu_redis.Transport)]
#: An attribute set in a class's code: ``self.name = ...`` or ``self.name: type = ...``.
ASSIGNED = re.compile(r"\bself\.(\w+)\s*(?::[^=\n]+)?=[^=]")
KOMBU = Version(version("kombu"))


def listed(cls: type) -> set[str]:
    """The names ``cls``'s docstring lists as the kombu hooks it overrides (``- ``name``: why``)."""
    return set(re.findall(r"^\s*- ``(\w+)``: \S", inspect.getdoc(cls) or "", re.MULTILINE))


def own_classes(cls: type, kombu_cls: type) -> list[type]:
    """``cls`` and what it inherits before kombu's class (our mixins)."""
    mro = inspect.getmro(cls)
    return [item for item in mro[:mro.index(kombu_cls)] if not issubclass(kombu_cls, item)]


def names_of(classes: list[type], *, set_in: str | None = "__init__") -> set[str]:
    """What ``classes`` define: their class attributes and methods (``__init__`` but no other dunder),
    and the attributes that ``set_in`` (every method where None) sets on ``self``. Setting one of
    kombu's attributes elsewhere is using kombu's state, as its own code does (compat.py's ``attr``),
    not replacing it."""
    found = set()
    for item in classes:
        found |= {name for name in vars(item) if not (name.startswith("__") and name != "__init__")}
        code = item if set_in is None else vars(item).get(set_in)
        if code is not None:
            found |= set(ASSIGNED.findall(inspect.getsource(code)))
    return found


@functools.cache
def kombu_names(kombu_cls: type) -> frozenset[str]:
    """What ``kombu_cls`` has: its attributes, and those its code (or its bases') sets on ``self``."""
    return frozenset(dir(kombu_cls)) | names_of([item for item in inspect.getmro(kombu_cls)
                                                 if item.__module__.startswith("kombu.")], set_in=None)


def overridden(cls: type, kombu_cls: type) -> set[str]:
    """The names of ``kombu_cls`` that ``cls`` (or a mixin of ours before kombu's class) replaces."""
    return names_of(own_classes(cls, kombu_cls)) & kombu_names(kombu_cls)


def compat_entries(kombu_cls: type, name: str) -> list[Any]:
    """``compat.PRIVATE_NAMES`` entries for ``name`` on ``kombu_cls`` or a kombu class it inherits from."""
    owners = {f"{item.__module__}.{item.__qualname__}" for item in inspect.getmro(kombu_cls)}
    owners |= {owner.replace(".base.", ".") for owner in owners}  # kombu.transport.virtual(.base).Channel
    return [entry for entry in PRIVATE_NAMES if entry.dependency == "kombu" and entry.name == name
            and entry.owner in owners]


@pytest.mark.parametrize(("cls", "kombu_cls"), PAIRS, ids=lambda item: item.__name__)
def test_every_kombu_hook_we_override_is_listed_and_every_listed_one_is_overridden(cls, kombu_cls):
    hooks = listed(cls)
    assert hooks, f"{cls.__name__}'s docstring lists no kombu hooks"
    found = overridden(cls, kombu_cls)
    assert found - hooks == set(), (
        f"{cls.__name__} overrides kombu's {sorted(found - hooks)} without listing them in its docstring "
        f"(one line each: the name and why)")
    for name in hooks - found:  # listed, not overridden: only a name this kombu lacks (a shim's, see compat)
        assert name in names_of(own_classes(cls, kombu_cls)), f"{cls.__name__} lists {name} but does not define it"
        since = [entry.since for entry in compat_entries(kombu_cls, name) if entry.since]
        assert since and KOMBU < Version(since[0]), (
            f"{cls.__name__} lists {name}, which kombu {KOMBU} does not have, and compat.py says no version lacks it")


@pytest.mark.parametrize(("cls", "kombu_cls"), PAIRS, ids=lambda item: item.__name__)
def test_every_private_hook_is_in_compat(cls, kombu_cls):
    """A private kombu name we override is one compat.py lists, so an upgrade that renames it fails there."""
    missing = [name for name in listed(cls) if name.startswith("_") and not name.startswith("__")
               and not compat_entries(kombu_cls, name)]
    assert missing == [], f"{cls.__name__} overrides kombu's private {missing}, which compat.PRIVATE_NAMES lacks"


@pytest.mark.parametrize(("cls", "kombu_cls"), PAIRS, ids=lambda item: item.__name__)
def test_every_override_compat_lists_for_these_classes_is_listed_here(cls, kombu_cls):
    """The two lists agree: what compat.py says we override on kombu's Redis classes is in the docstring."""
    prefix = f"{kombu_cls.__module__}.{kombu_cls.__qualname__}"
    overrides = {entry.name for entry in PRIVATE_NAMES if entry.owner == prefix and entry.kind == "override"}
    assert overrides - listed(cls) == set()


def test_an_unlisted_override_is_found():
    """The check can fail: a subclass that overrides one more kombu method, or sets one more of its attributes."""

    class Sneaky(ours.Channel):
        def _size(self, queue: str) -> int:
            return 0

    class Replaces(ours.QoS):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.prefetch_count = 1

    assert overridden(Sneaky, kombu_redis.Channel) - listed(ours.Channel) == {"_size"}
    assert overridden(Replaces, kombu_redis.QoS) - listed(ours.QoS) == {"prefetch_count"}
