"""The registry of remote-control commands: a handler per command name, and the replies' two shapes.

Kept apart from the node that serves them (remote_control.py) so that the modules defining commands
(remote_control.py, control_actions.py) register them here without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .remote_control import RemoteControl

Handler = Callable[..., Any]


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


class _Handlers(dict):
    """Command name -> handler; an unknown name answers with an error instead of raising."""

    def __missing__(self, name: str) -> Handler:
        def unknown(control: RemoteControl, **kwargs: Any) -> dict[str, Any]:
            return nok(f"unknown command {name!r}; {control.hostname} answers: {', '.join(sorted(self))}")
        return unknown


HANDLERS: dict[str, Handler] = _Handlers()
#: the commands that only read (``celery inspect``): all a worker answers with ``REMOTE_CONTROL = "read-only"``
INSPECT_COMMANDS: set[str] = set()


def command(*names: str, inspect: bool = False) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for name in names or (function.__name__,):
            HANDLERS[name] = function
            if inspect:
                INSPECT_COMMANDS.add(name)
        return function
    return register
