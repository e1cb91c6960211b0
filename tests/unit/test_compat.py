"""Every private name of a dependency that the package relies on (``django_tasks_q.compat``) is still there.

One test per name, so an upgrade that breaks three of them fails three
tests, each naming the dependency and its version, the owner and the name,
and why we use it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version
from typing import Any

import pytest
from kombu.transport import native_delayed_delivery
from packaging.version import Version

from django_tasks_q.broker import delayed
from django_tasks_q.compat import PRIVATE_NAMES, Private, accepts_argument, requires_argument


def resolve(dotted: str) -> Any:
    """The module, class or function at ``dotted`` (the longest importable prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


def parameter_names(function: Any) -> tuple[str, ...]:
    names = tuple(inspect.signature(function).parameters)
    return names[1:] if names[:1] in (("self",), ("cls",)) else names


def sources(owner: Any) -> list[str]:
    """The source of ``owner`` and, for a class, of every class it inherits from."""
    found = []
    for item in inspect.getmro(owner) if inspect.isclass(owner) else [owner]:
        try:
            found.append(inspect.getsource(item))
        except (OSError, TypeError):  # builtins, object
            continue
    return found


def problem(entry: Private) -> str | None:
    """What is wrong with ``entry`` on the installed version, or None."""
    try:
        owner = resolve(entry.owner)
    except (ImportError, AttributeError) as exc:
        return f"{entry.owner} cannot be imported ({exc})"
    if entry.kind == "hook":
        if not any(re.search(rf"\.{re.escape(entry.name)}\(", text) for text in sources(owner)):
            return f"{entry.owner} no longer calls {entry.name}()"
        return None
    if entry.kind == "attr":
        assigned = re.compile(rf"\bself\.{re.escape(entry.name)}\s*(:[^=\n]+)?=[^=]")
        if not hasattr(owner, entry.name) and not any(assigned.search(text) for text in sources(owner)):
            return f"{entry.owner} has no attribute {entry.name}"
        return None
    function = getattr(owner, entry.name, None)
    if not callable(function):
        return f"{entry.owner}.{entry.name} is gone"
    parameters = inspect.signature(function).parameters
    names = parameter_names(function)
    if entry.kind == "override":
        if names != entry.params:
            return f"{entry.owner}.{entry.name} takes {names}, our override expects {entry.params}"
        return None
    unknown = [name for name in entry.params if not accepts_argument(function, name)]
    required = [name for name in names if name not in entry.params and parameters[name].default is
                parameters[name].empty and parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                          inspect.Parameter.VAR_KEYWORD)]
    if unknown or required:
        return (f"{entry.owner}.{entry.name} takes {names}: we pass {entry.params}"
                + (f", which it does not take: {unknown}" if unknown else "")
                + (f", without {required}, which it requires" if required else ""))
    return None


@pytest.mark.parametrize("entry", PRIVATE_NAMES, ids=lambda entry: f"{entry.owner}.{entry.name}")
def test_a_private_name_we_rely_on_is_still_there(entry):
    installed = version(entry.dependency)
    if entry.since is not None and Version(installed) < Version(entry.since):
        pytest.skip(f"{entry.dependency} {installed} is older than {entry.since}: a shim stands in for it")
    found = problem(entry)
    assert found is None, (
        f"{entry.dependency} {installed}: {found}. Why we use {entry.owner}.{entry.name}: {entry.why}. Adapt "
        f"the code that uses it (see django_tasks_q/compat.py) before allowing this version.")


def test_every_entry_is_named_once_and_says_why():
    keys = [(entry.owner, entry.name) for entry in PRIVATE_NAMES]
    assert len(keys) == len(set(keys)), sorted(key for key in keys if keys.count(key) > 1)
    assert all(entry.why and entry.kind in ("override", "call", "attr", "hook") for entry in PRIVATE_NAMES)


def test_the_checks_find_what_is_missing_or_changed():
    """The checks above can fail: a misspelt name, a changed signature, an argument no longer taken."""
    checks = [
        Private("kombu", "kombu.transport.redis.Channel", "_brpop_strat", "override", "x", ("timeout",)),
        Private("kombu", "kombu.transport.redis.Channel", "_brpop_start", "override", "x", ("timeout", "more")),
        Private("kombu", "kombu.transport.redis.Channel", "_q_for_pri", "call", "x", ("queue",)),
        Private("kombu", "kombu.transport.redis.Channel", "_q_for_pri", "call", "x", ("queue", "pri", "extra")),
        Private("kombu", "kombu.transport.virtual.Channel", "_tag_to_queeu", "attr", "x"),
        Private("kombu", "kombu.transport.virtual.exchange.FanoutExchange", "_put_fanot", "hook", "x"),
        Private("kombu", "kombu.transport.nothing.Channel", "_get", "override", "x"),
    ]
    assert [problem(entry) is not None for entry in checks] == [True] * len(checks)
    assert problem(Private("kombu", "kombu.transport.virtual.Channel", "_tag_to_queue", "attr", "x")) is None


def test_argument_checks():
    def function(a, b=1, *args, c, **kwargs): ...

    def plain(a, b=1): ...

    assert accepts_argument(plain, "b") and not accepts_argument(plain, "c") and accepts_argument(function, "z")
    assert requires_argument(function, "a") and requires_argument(function, "c")
    assert not requires_argument(function, "b") and not requires_argument(function, "args")


class Recorder:
    """A channel that records what kombu's entities declare and bind on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def prepare_queue_arguments(self, arguments: dict, **kwargs: Any) -> dict:
        return arguments

    def close(self) -> None:
        pass

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record


class RecordingConnection:
    def __init__(self) -> None:
        self.recorder = Recorder()

    def channel(self) -> Recorder:
        return self.recorder


def declared_by(declare: Any, *args: Any) -> list[tuple[str, tuple, dict]]:
    connection = RecordingConnection()
    declare(connection, *args)
    return connection.recorder.calls


def test_the_delay_topology_is_the_one_kombu_declares():
    """Our RabbitMQ delay topology (broker/delayed.py) declares what kombu's native delayed delivery does:
    without a prefix on every kombu version, and with ours where kombu takes a prefix (5.7), so that a
    broker declared by either accepts the other's declarations."""
    ours = declared_by(delayed.declare_delay_topology, "")
    assert ours == declared_by(native_delayed_delivery.declare_native_delayed_delivery_exchanges_and_queues,
                               "classic")
    assert len(ours) > 3 * delayed.MAX_NUMBER_OF_BITS_TO_USE
    declare = native_delayed_delivery.declare_native_delayed_delivery_exchanges_and_queues
    if accepts_argument(declare, "prefix"):
        assert declared_by(delayed.declare_delay_topology) == declared_by(declare, "classic", delayed.AMQP_PREFIX)


@pytest.mark.parametrize("delay", [1, 5, 2**20 + 3, delayed.AMQP_MAX_DELAY])
def test_the_delay_routing_key_is_the_one_kombu_computes(delay):
    expected = native_delayed_delivery.calculate_routing_key(delay, "videos")
    assert delayed.delay_routing_key(delay, "videos") == expected
    assert delayed.delay_routing_key(delay, expected) == expected  # a retry's key is not stacked
