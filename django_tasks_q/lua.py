"""The Lua scripts the Redis parts run, read from ``.lua`` files that sit beside their modules.

:func:`load_script` reads ``lua/<name>`` from the folder of the module that
runs it, once, when that module is imported, and fills in its ``${NAME}``
placeholders from keyword arguments: a value Python uses too (the wake-token prefix and cap) is written
in one Python place and never copied into a script. A placeholder left without
a value, or a value no placeholder asks for, fails the import. Lines that are
only a ``--`` comment document the file and are dropped: they would otherwise
travel with every ``EVAL``. Callers run the text as before (``register_script``,
``EVALSHA`` with a ``SCRIPT LOAD`` when Redis answers ``NOSCRIPT``).
"""

from __future__ import annotations

from importlib.resources import files
from string import Template


def load_script(module: str, name: str, **constants: int | str) -> str:
    """The script ``lua/<name>`` beside ``module`` (pass ``__name__``), ``constants`` filled in."""
    package = module.rpartition(".")[0]
    template = Template(files(package).joinpath("lua", name).read_text(encoding="utf-8"))
    unused = set(constants) - set(template.get_identifiers())
    if unused:
        raise ValueError(f"Lua script {package}/lua/{name} has no placeholder for {sorted(unused)}")
    source = template.substitute({key: _lua_literal(value) for key, value in constants.items()})
    return "".join(line for line in source.splitlines(keepends=True) if not line.lstrip().startswith("--"))


def _lua_literal(value: int | str) -> str:
    """``value`` as Lua source: a number, or a quoted string of printable ASCII that needs no escape."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isprintable() and not {"'", "\\"} & set(value):
        return f"'{value}'"
    raise ValueError(f"not a constant a Lua script can be given: {value!r}")
