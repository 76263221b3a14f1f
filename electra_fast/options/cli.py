"""argparse from the option fields of a config dataclass (electra_fast.options): one flag per field, with its
default, help and shape, and the config back from the parsed arguments; and the one line a command prints for
bad input."""
from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_BAD_INPUT, flag
from . import options_of

_BUILT_IN_TYPES = (int, float, str)


def _reading(parse):
    """argparse's `type` for a parser of our own: its ValueError becomes argparse's one-line usage error, with
    the parser's own message (argparse would print "invalid <name> value" for a bare ValueError)."""
    def read(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    read.__name__ = parse.__name__
    return read


def add_options(parser: argparse.ArgumentParser, config_class, *, skip: tuple[str, ...] = ()) -> None:
    """Adds a flag to `parser` for every option field of `config_class` but those named in `skip`: `--name-of-field`,
    stored as `name_of_field`, with the field's default and shape."""
    for field in options_of(config_class):
        if field.name in skip:
            continue
        shape = dict(field.metadata["option"])
        shape.pop("value_type", None)
        if "help" in shape:
            shape["help"] = shape["help"].replace("%", "%%")  # argparse formats help with %
        if shape.get("action") == "boolean_optional":
            shape["action"] = argparse.BooleanOptionalAction
        if "type" in shape and shape["type"] not in _BUILT_IN_TYPES:
            shape["type"] = _reading(shape["type"])
        if "choices" in shape:
            shape["choices"] = list(shape["choices"])
        parser.add_argument(flag(field.name), dest=field.name, default=field.default, **shape)


def config_from(args: argparse.Namespace, config_class):
    """`config_class` from the arguments that add_options defined (every option field the namespace holds); the
    values of a flag that takes several become a tuple where the field's default is one."""
    values = {}
    for field in options_of(config_class):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(field.default, tuple) and isinstance(value, list) else value
    return config_class(**values)


def report_bad_input(command: str, error: Exception) -> int:
    """Prints `error` as the command's one line (`electra-fast COMMAND: error: ...`); returns EXIT_BAD_INPUT."""
    print(f"electra-fast {command}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
