"""Bad input: the one base class of the errors that electra-fast raises for input it cannot use, the exit status
of a command that meets one, and the range checks of the options.

Every such error is a `BadInput` (a ValueError): DataError (token data, tokenizers), CorpusError (a corpus),
CheckpointError (a checkpoint), FinetuneDataError (fine-tuning files and options), PlotError (run folders), a
PretrainConfig or PrepareConfig value out of range, a Hugging Face model choice that does not fit. Its message is
one line that names the option at fault in its command-line spelling (`--steps`, `--corpus`; the field of a
config is the flag's name with underscores: `steps`, `corpus`), with the file, line or value where they apply,
and says what was expected; the same line through the Python API and through the command, which prints it as
`electra-fast COMMAND: error: MESSAGE` and exits with EXIT_BAD_INPUT. `BadInput.field` names the config field
when one option's value is at fault (else None), for programs that handle the error.

The range checks: the first option outside its range raises one error naming it, e.g.
`--lr must be a finite number > 0, got -1.0`:

    check_ranges(config, [at_least("batch_size", 1), finite_above("lr", 0), within("warmup_fraction", 0, 1)])
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

EXIT_BAD_INPUT = 2      # a command's exit status for bad input (its one-line error printed)
EXIT_INTERRUPTED = 130  # ... when interrupted (Ctrl-C): 128 + SIGINT, as a shell reports it


class BadInput(ValueError):
    """Input that electra-fast cannot use; the message names the option (as its flag) and what was expected.
    `field`: the config field whose value is at fault, where one is (else None)."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def flag(field: str) -> str:
    """The command-line flag of a config field: "batch_size" -> "--batch-size"."""
    return "--" + field.replace("_", "-")


Check = tuple[str, Callable[[Any], bool], str]   # (attribute, whether its value is in range, the range in words)


def check_ranges(values: object, checks: Iterable[Check], error: type[BadInput] = BadInput) -> None:
    """Raises `error` (BadInput or a subclass) for the first check whose attribute of `values` (argparse's
    Namespace, a dataclass) is out of its range, naming it as its flag, with `field` set to the attribute. None
    passes: it stands for the default."""
    for name, in_range, expected in checks:
        value = getattr(values, name)
        if value is not None and not in_range(value):
            raise error(f"{flag(name)} must be {expected}, got {value}", field=name)


def at_least(name: str, bound: int) -> Check:
    return name, lambda value: value >= bound, f"at least {bound}"


def finite_above(name: str, bound: float) -> Check:
    return name, lambda value: math.isfinite(value) and value > bound, f"a finite number > {bound}"


def finite_at_least(name: str, bound: float) -> Check:
    return name, lambda value: math.isfinite(value) and value >= bound, f"a finite number >= {bound}"


def within(name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           written: str | None = None) -> Check:
    """`value` in the interval from low to high, each end closed unless said open; `written`: how the message writes
    the interval (default: as [low, high], with parentheses at the open ends)."""
    def in_range(value) -> bool:
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)

    interval = written or f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return name, in_range, f"in {interval}"
