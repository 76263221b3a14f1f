"""A command's options as the fields of one dataclass (PretrainConfig, PrepareConfig): each field holds its
default, its help and its command-line shape, so that the Python API and the command read one list of options.
The field `batch_size` is the flag `--batch-size`; `cli.add_options` builds the parser from the fields, and
`check_fields` checks the types and choices of a config built in Python (argparse checks the command's)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..errors import BadInput, flag

_SWITCHES = ("store_true", "boolean_optional")


def option(default: Any, help: str | None = None, *, type: Callable | None = None, value_type: type | None = None,
           choices=None, nargs: str | None = None, metavar: str | None = None, action: str | None = None):
    """A dataclass field with its default and command-line shape.

    help: the flag's help, plain text (no argparse % escapes); type: what reads the flag's text (int, float, or a
    parser of one string such as data.config.byte_count, which raises ValueError); value_type: the Python type of
    the value where `type` is such a parser; choices; nargs ("+": a list); metavar; action: "store_true" (a
    switch, False by default) or "boolean_optional" (--x / --no-x, None by default: decided at run time)."""
    if action is not None and action not in _SWITCHES:
        raise ValueError(f"action must be one of {_SWITCHES}, got {action!r}")
    shape = {"help": help, "type": type, "value_type": value_type, "choices": tuple(choices) if choices else None,
             "nargs": nargs, "metavar": metavar, "action": action}
    return dataclasses.field(default=default, metadata={"option": {k: v for k, v in shape.items() if v is not None}})


def options_of(config_class) -> list[dataclasses.Field]:
    """The fields of `config_class` that are options (every field made by `option`), in order."""
    return [f for f in dataclasses.fields(config_class) if "option" in f.metadata]


def _python_type(shape: dict):
    """The type a value of an option must have (None: any), from its shape."""
    if shape.get("action") in _SWITCHES:
        return bool
    if "value_type" in shape:
        return shape["value_type"]
    return shape.get("type", str)


def _type_name(kind) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "True or False"}.get(kind, kind.__name__)


def _fits(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_fields(config) -> None:
    """Raises BadInput naming (as its flag, `field` set) the first option of `config` whose value has the wrong
    type, is not one of its choices, or is not a list where the flag takes several values. None passes where it
    is the default (it stands for a value decided at run time)."""
    for f in options_of(type(config)):
        shape, value = f.metadata["option"], getattr(config, f.name)
        if value is None and f.default is None:
            continue
        kind = _python_type(shape)
        if shape.get("nargs") == "+":
            if not isinstance(value, (list, tuple)):
                raise BadInput(f"{flag(f.name)} must be a list of {_type_name(kind).split(' ', 1)[1]}s, got "
                               f"{value!r}", field=f.name)
            items = value
        else:
            items = [value]
        for item in items:
            if not _fits(item, kind):
                raise BadInput(f"{flag(f.name)} must be {_type_name(kind)}, got {item!r}", field=f.name)
            if "choices" in shape and item not in shape["choices"]:
                raise BadInput(f"{flag(f.name)} must be one of {', '.join(map(str, shape['choices']))}, got {item!r}",
                               field=f.name)
