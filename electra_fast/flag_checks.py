"""Range checks of the commands' numeric flags: the first flag outside its range raises one error naming it, in
the form `--lr must be a finite number > 0, got -1.0`, which the command prints as its one line (exit 2).

    check_ranges(args, [at_least("batch_size", 1), finite_above("lr", 0), within("warmup_fraction", 0, 1)],
                 DataError)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

Check = tuple[str, Callable[[Any], bool], str]   # (attribute, whether its value is in range, the range in words)


def check_ranges(values: object, checks: Iterable[Check], error: type[Exception]) -> None:
    """Raises `error` for the first check whose attribute of `values` (argparse's Namespace, a dataclass) is out of
    its range. None passes: it stands for the default."""
    for name, in_range, expected in checks:
        value = getattr(values, name)
        if value is not None and not in_range(value):
            raise error(f"--{name.replace('_', '-')} must be {expected}, got {value}")


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
